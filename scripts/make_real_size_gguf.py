"""Write a real-size, random-weight Llama-shaped F16 GGUF file, tensor by tensor, for benchmarks.

    python scripts/make_real_size_gguf.py 1b /tmp/real/llama-1b-F16.gguf
    python scripts/make_real_size_gguf.py 8b /tmp/real/llama-8b-F16.gguf
    llama-quantize /tmp/real/llama-1b-F16.gguf /tmp/real/llama-1b-Q4_K_M.gguf Q4_K_M   # and Q8_0

No weights are downloaded: the shapes are Llama 3.2 1B's (hidden 2048, 16 layers, 32 heads, 8
KV heads, FFN 8192, tied embeddings) and Llama 3.1 8B's (4096, 32, 32, 8, 14336, untied), the
vocabulary 128,256 tokens: GPT-2's byte-level BPE (shipped with chatterm) padded with unused
tokens, so both chatterm and llama.cpp can tokenize a prompt. Weights are normal with the
usual 0.02 scale, norms 1: the text is nonsense, the timings and memory are those of the real
shapes. Tensors are generated and written one at a time, so writing the 16 GB 8B file needs
about one tensor of memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHAPES = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, tied=True, rope_theta=500000.0),
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, tied=False, rope_theta=500000.0),
}
VOCAB = 128256


def tensors(shape: dict):
    """(name, (rows, columns) or (n,)) in llama.cpp's order and naming."""
    h, ffn, hd = shape["hidden"], shape["ffn"], shape["hidden"] // shape["heads"]
    kv = shape["kv_heads"] * hd
    yield "token_embd.weight", (VOCAB, h)
    for i in range(shape["layers"]):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (h,)
        yield b + "attn_q.weight", (h, h)
        yield b + "attn_k.weight", (kv, h)
        yield b + "attn_v.weight", (kv, h)
        yield b + "attn_output.weight", (h, h)
        yield b + "ffn_norm.weight", (h,)
        yield b + "ffn_gate.weight", (ffn, h)
        yield b + "ffn_up.weight", (ffn, h)
        yield b + "ffn_down.weight", (h, ffn)
    yield "output_norm.weight", (h,)
    if not shape["tied"]:
        yield "output.weight", (VOCAB, h)


def main() -> None:
    import gguf

    from chatterm.engine.tokenizer import _BPE_DIR as BPE_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", choices=sorted(SHAPES))
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    shape = SHAPES[args.size]
    w = gguf.GGUFWriter(str(args.out), "llama")
    w.add_name(f"random-llama-{args.size}")
    w.add_context_length(131072)
    w.add_embedding_length(shape["hidden"])
    w.add_block_count(shape["layers"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    encoder = json.loads((BPE_DIR / "encoder.json").read_text())
    tokens = sorted(encoder, key=encoder.get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens + [f"[PAD{i}]" for i in range(len(tokens), VOCAB)])
    w.add_token_types([1] * len(tokens) + [5] * (VOCAB - len(tokens)))
    merges = (BPE_DIR / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    w.add_token_merges([m for m in merges if m])
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)
    w.add_add_bos_token(False)
    layout = list(tensors(shape))
    for name, dims in layout:
        dtype = np.float32 if len(dims) == 1 else np.float16
        w.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(args.seed)
    for n, (name, dims) in enumerate(layout):
        if len(dims) == 1:
            data = np.ones(dims, np.float32)
        else:
            data = (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)
        w.write_tensor_data(data)
        print(f"\r{n + 1}/{len(layout)} tensors", end="", flush=True)
    w.close()
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
