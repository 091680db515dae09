"""Mean log-likelihood of held-back text per precision: how much int8/int4 weights cost.

    PYTHONPATH=src python scripts/quant_quality.py checkpoints/chitchat
    PYTHONPATH=src python scripts/quant_quality.py ~/.local/share/chatterm/models/smollm2-135m-instruct.gguf --windows 4 --window 256

The text is the validation split of chitchat-dataset (`pip install chitchat-dataset`; the
conversations held out from the default model's training), tokenized by each model's own
tokenizer, and scored token by token as a reply is decoded. Each precision loads the model through `LocalBackend.load(..., dtype=...)`, the path
the app takes, and scores the same windows; printed: mean negative log-likelihood per token,
perplexity, and the change against the first precision listed (`--dtypes fp32,auto`: the
file's own quantization, as stored, against its dequantized fp32 model).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F


def held_back_text(limit_chars: int) -> str:
    from chatterm.train.data import load_chitchat, split_documents

    _, val = split_documents(load_chitchat())
    text, out = 0, []
    for doc in val:
        out.append(doc)
        text += len(doc)
        if text > limit_chars:
            break
    return "\n\n".join(out)


def mean_nll(model, ids: torch.Tensor, window: int, windows: int) -> float:
    """Scored one token at a time through a KV cache: the arithmetic of a decode step (chatterm's
    quantized kernels round the activations of single tokens; a whole window at once would take
    the float GEMM path that prompts take)."""
    from chatterm.model import KVCache

    cache = KVCache.for_model(model, max_len=window)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(windows):
            chunk = ids[i * window : (i + 1) * window + 1]
            if chunk.numel() < 2:
                break
            for t in range(chunk.numel() - 1):  # each window starts over at position 0
                logits = model(chunk[None, t : t + 1], torch.tensor([t]), cache)[0, -1].float()
                total += F.cross_entropy(logits[None], chunk[t + 1 : t + 2]).item()
            count += chunk.numel() - 1
    return total / count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint path or installed model name")
    p.add_argument("--dtypes", default="bf16,fp32,int8,int4", help="precisions; auto: as stored")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--windows", type=int, default=8)
    args = p.parse_args()
    from chatterm.session.backends.local import LocalBackend

    text = held_back_text(args.window * args.windows * 8)
    results = {}
    for dtype in args.dtypes.split(","):
        backend = LocalBackend.load(args.model, dtype=dtype)
        ids = torch.tensor(backend.tokenizer.encode(text), dtype=torch.long)
        window = min(args.window, backend.info.context_window - 1)
        results[dtype] = nll = mean_nll(backend.generator.model, ids, window, args.windows)
        first = next(iter(results))  # the reference: the first precision listed
        change = f"  {100 * (nll / results[first] - 1):+.2f}% vs {first}" if dtype != first else ""
        print(f"{backend.info.name} {dtype:5s}: mean NLL {nll:.4f} nats/token, perplexity {math.exp(nll):.2f}"
              f" ({min(ids.numel(), window * args.windows)} tokens){change}", flush=True)
        del backend
    return 0


if __name__ == "__main__":
    sys.exit(main())
