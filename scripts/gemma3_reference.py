"""Greedy tokens of a Gemma 3 GGUF file, chatterm's against transformers' on the same weights.

    PYTHONPATH=src python scripts/gemma3_reference.py FILE.gguf ["prompt" ...] [--new-tokens 16]

transformers' Gemma3ForCausalLM is built from the file's config and given every tensor
dequantized to fp32 (norms less the 1 llama.cpp's converter adds), so it computes the file's own
weights exactly; chatterm loads the file as the app does (stored blocks, its CPU kernels, which
quantize activations). For each prompt: both continuations, the first token where they part,
and chatterm's margin between its top two logits at each step (a small margin is a near-tie,
where rounding decides).
"""

from __future__ import annotations

import argparse

import torch

from chatterm.engine.generator import Generator
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import load_checkpoint
from chatterm.model.formats.gguf import GGUFFile

# transformers' module names -> llama.cpp's
NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def transformers_model(path, cfg):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, sliding_window=cfg.sliding_window, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, query_pre_attn_scalar=int(cfg.query_pre_attn_scalar), tie_word_embeddings=True,
        layer_types=["sliding_attention" if local else "full_attention" for local in cfg.local_layers],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta},
                         "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta}}))
    g = GGUFFile(path)
    weights = {}
    for key in model.state_dict():
        parts = key.removeprefix("model.").split(".")
        if parts[0] == "lm_head":
            continue  # tied
        if parts[0] == "layers":
            name = f"blk.{parts[1]}.{NAMES['.'.join(parts[2:-1])]}.weight"
        else:
            name = {"embed_tokens": "token_embd", "norm": "output_norm"}[parts[0]] + ".weight"
        tensor = g.tensor(name).float()
        weights[key] = tensor - 1 if name.endswith("norm.weight") else tensor
    model.load_state_dict(weights, strict=False)
    model.tie_weights()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("prompts", nargs="*", default=["The capital of France is"])
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()
    ckpt = load_checkpoint(args.file, inference=True)
    tokenizer = open_tokenizer(ckpt.meta["tokenizer"])
    reference = transformers_model(args.file, ckpt.config)
    for prompt in args.prompts:
        ids = ([tokenizer.bos_id] if getattr(tokenizer, "add_bos", False) else []) + tokenizer.encode(prompt)
        with torch.inference_mode():
            want = reference.generate(torch.tensor([ids]), max_new_tokens=args.new_tokens, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
            gen = Generator(ckpt.model, tokenizer)
            logits, _ = gen.prefill(ids)
            ours, margins = [], []
            for _ in range(args.new_tokens):
                top = logits.float().topk(2).values
                margins.append(float(top[0] - top[1]))
                ours.append(int(logits.argmax()))
                logits = gen.decode(ours[-1])
        same = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), len(ours))
        print(f"== {prompt!r}\ntransformers (dequantized fp32): {tokenizer.decode(want)!r}\n"
              f"chatterm:                        {tokenizer.decode(ours)!r}\n"
              f"same for the first {same} of {len(ours)} tokens; chatterm's top-2 margins: "
              + " ".join(f"{m:.2f}" for m in margins))


if __name__ == "__main__":
    main()
