"""`chatterm bench --llama-bench PATH`: decode speed side by side with llama.cpp's `llama-bench`
on the same weights, per precision, alternating the two so that machine drift hits both.

llama.cpp is a measuring stick here, never a dependency: the binary is the user's (`--llama-bench`
or `llama-bench` on PATH). Both sides read one GGUF file per precision, written once into
`--gguf-dir` (reused when present):
- GPT-2 shapes (random weights, seed 0): our model written as GGUF `gpt2` with GPT-2's tokenizer;
- a GGUF checkpoint (`chatterm bench MODEL.gguf`): its tensors requantized, metadata copied.

Precisions are pairs `ours:theirs` (`--llama-pairs`, default `fp32:F32,bf16:BF16,int8:Q8_0,int4:Q4_0`):
we load that same file with `--dtype ours` (GGUF blocks dequantized, then quantized again for the
int8/int4 kernels), llama.cpp runs it as is. In the 4-bit file the tied token embedding / output
projection is Q8_0, as our int4 keeps that matrix in 8 bits (llama.cpp's own quantizer keeps it
at 6 bits). Each round: our greedy decode of `--new-tokens` after the `--prompt-tokens` prompt,
then `llama-bench -p 0 -n N -r 1` (tg N: decoding from an empty context, so slightly favourable
to llama.cpp). Printed per precision: both medians and the median of the per-round ratios.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from .atomic import atomic_write

DEFAULT_PAIRS = "fp32:F32,bf16:BF16,int8:Q8_0,int4:Q4_0"


def find_llama_bench(path: str | None) -> str | None:
    """The binary to run: `path` when it is an executable file, else `llama-bench` on PATH."""
    if path:
        return path if Path(path).is_file() else None
    return shutil.which("llama-bench")


def llama_cpp_side_by_side(args, binary: str, tokenizer_for) -> None:
    """Print ours vs llama.cpp per precision pair (see the module docstring)."""
    import torch

    folder = Path(args.gguf_dir or tempfile.mkdtemp(prefix="chatterm-gguf-"))
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    prompt = list(range(100, 100 + args.prompt_tokens))
    print(f"[llama.cpp] {binary}, {threads} threads, GGUF files in {folder}; {args.runs} alternating rounds")
    for pair in args.llama_pairs.split(","):
        ours_dtype, qtype = pair.split(":")
        path = gguf_for(args, folder, qtype)
        gen, label = _our_generator(path, ours_dtype, tokenizer_for)
        ours_speeds, theirs_speeds, ratios = [], [], []
        _ours(gen, prompt, args.new_tokens)  # warm-up
        for _ in range(args.runs):
            ours = _ours(gen, prompt, args.new_tokens)
            theirs = _theirs(binary, path, args.new_tokens, threads)
            ours_speeds.append(ours)
            theirs_speeds.append(theirs)
            ratios.append(ours / theirs)
        print(f"[{ours_dtype} vs {qtype}] ours {statistics.median(ours_speeds):7.1f} tok/s ({label}), llama.cpp "
              f"{statistics.median(theirs_speeds):7.1f} tok/s -> ours/theirs {statistics.median(ratios):.2f}x "
              f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)})", flush=True)
        del gen


def gguf_for(args, folder: Path, qtype: str) -> Path:
    """The GGUF file of this run's weights in `qtype`, written once."""
    source = Path(args.checkpoint) if args.checkpoint else None
    stem = source.stem if source else f"{args.shape}-seed0"
    path = folder / f"{stem}-{qtype}.gguf"
    if not path.exists():
        if source is not None:
            atomic_write(path, lambda tmp: requantize_gguf(source, Path(tmp), qtype), new_mode=0o644)
        else:
            atomic_write(path, lambda tmp: write_gpt2_gguf(_random_gpt(args.shape), Path(tmp), qtype), new_mode=0o644)
    return path


def _random_gpt(name: str):
    import torch

    from .model import GPT, shape

    torch.manual_seed(0)
    return GPT(shape(name)).init_weights(0).eval()


def _our_generator(path: Path, dtype: str, tokenizer_for):
    import torch

    from .engine.generator import Generator
    from .model import load_checkpoint, precision_name
    from .model.cpu.linear import linear_kinds

    model = load_checkpoint(path, precision=precision_name(dtype, torch.device("cpu")), inference=True).model
    how = linear_kinds(model)
    return Generator(model, tokenizer_for(model)), how


def _ours(gen, prompt, n) -> float:
    from .engine.settings import SamplingSettings

    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=n)
    return gen.complete(prompt, settings).tokens_per_s


def _theirs(binary: str, path: Path, n: int, threads: int) -> float:
    cmd = [binary, "-m", str(path), "-p", "0", "-n", str(n), "-t", str(threads), "-r", "1", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def _quantized(array, qtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: 1-D tensors stay F32, as llama.cpp keeps them."""
    import gguf
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or qtype == "F32":
        return array, None
    kind = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.quantize(array, kind), kind


def write_gpt2_gguf(model, path: Path, qtype: str) -> None:
    """Our GPT as a llama.cpp `gpt2` GGUF file with GPT-2's tokenizer, 2-D weights in `qtype`."""
    import gguf

    from .engine.tokenizer import _BPE_DIR as BPE_DIR  # the GPT-2 files shipped with the engine
    from .model.families.gpt2 import gguf_tensors

    c = model.config
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_eps)
    encoder = json.loads((BPE_DIR / "encoder.json").read_text())
    tokens = sorted(encoder, key=encoder.get)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), c.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens[: c.vocab_size])
    w.add_token_types([5 if t.startswith("[PAD") else 1 for t in tokens[: c.vocab_size]])
    merges = (BPE_DIR / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    w.add_token_merges([m for m in merges if m])
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)
    sd = model.state_dict()
    for ours, sources in gguf_tensors(c, "gpt2").items():
        if ours == "lm_head.weight" and c.tie_embeddings:
            continue
        theirs = sources.parts[0].name
        tensor_type = "Q8_0" if qtype.startswith("Q4") and theirs == "token_embd.weight" else qtype
        data, raw = _quantized(sd[ours].float().numpy(), tensor_type)
        w.add_tensor(theirs, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def requantize_gguf(source: Path, path: Path, qtype: str) -> None:
    """A copy of GGUF `source` with every 2-D tensor in `qtype` (metadata copied as is)."""
    import gguf

    from .model.formats.gguf import GGUFFile

    reader = gguf.GGUFReader(str(source))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    w = gguf.GGUFWriter(str(path), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, kind, sub_type=field.types[-1])
        else:
            w.add_key_value(name, value, kind)
    ours = GGUFFile(source)
    tied = "output.weight" not in ours.tensors
    for tensor in reader.tensors:
        tensor_type = "Q8_0" if qtype.startswith("Q4") and tied and tensor.name == "token_embd.weight" else qtype
        data, raw = _quantized(ours.tensor(tensor.name).numpy(), tensor_type)
        w.add_tensor(tensor.name, data, raw_dtype=raw)
    ours.close()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
