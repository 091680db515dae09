"""`chatterm prepare`, `chatterm train` and `chatterm eval`: argument parsing for training."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from .config import TrainConfig

# Flags generated from TrainConfig so the dataclass stays the one source of names and defaults.
_SKIP = {"data", "out", "extra"}
FLAG_HELP = {  # one line per TrainConfig field; the default is appended from the dataclass
    "name": "model name written into the checkpoint's metadata",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "embedding width (a multiple of --n-head)",
    "block_size": "context window in tokens, also the training sequence length",
    "dropout": "dropout probability during training",
    "batch_size": "sequences per optimizer step",
    "max_steps": "optimizer steps in all (a resumed run counts the steps already done)",
    "lr": "peak learning rate (AdamW), reached after the warm-up",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient norm to this value",
    "eval_every": "steps between validation runs (the best checkpoint is kept)",
    "eval_batches": "batches per validation run",
    "log_every": "steps between progress lines",
    "seed": "random seed for initialization and batches",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "save_dtype": "dtype of the saved weights: fp32, bf16 or fp16",
    "time_limit_min": "stop (after saving) after this many minutes; 0 means no limit",
    "threads": "torch CPU threads; 0 means torch's default",
}


def add_parser(sub) -> None:
    prep = sub.add_parser("prepare", help="build training data: the chitchat corpus, or your own text file")
    prep.add_argument("source", help="'chitchat' (the chitchat-dataset package) or a UTF-8 text file")
    prep.add_argument("out", help="folder to write train.pt, val.pt, tokenizer.json")
    prep.add_argument("--vocab-size", type=int, default=4096, metavar="N",
                      help="BPE vocabulary size, <|endoftext|> included (default: %(default)s)")
    prep.set_defaults(func=run_prepare)

    train = sub.add_parser("train", help="train a GPT on prepared data (resumes if OUT has a train_state.pt)")
    train.add_argument("data", help="prepared folder (see `chatterm prepare`), or a text file to prepare first")
    train.add_argument("out", help="folder for the checkpoint (best by validation loss) and train_state.pt")
    for f in fields(TrainConfig):
        if f.name in _SKIP:
            continue
        train.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                           metavar=type(f.default).__name__.upper(),
                           help=f"{FLAG_HELP.get(f.name, f.name.replace('_', ' '))} (default: %(default)s)")
    train.set_defaults(func=run_train)

    ev = sub.add_parser("eval", help="recompute a checkpoint's validation loss on prepared data")
    ev.add_argument("checkpoint", help="checkpoint file or folder to evaluate")
    ev.add_argument("data", help="prepared folder holding val.pt")
    ev.add_argument("--batches", type=int, default=None, help="batches of 8 windows (default: as in the model card)")
    ev.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (default: %(default)s)")
    ev.set_defaults(func=run_eval)


def run_prepare(args) -> int:
    from .data import prepare, prepare_text

    if args.source == "chitchat":
        prepare(Path(args.out), vocab_size=args.vocab_size)
    else:
        print(json.dumps(prepare_text(Path(args.source), Path(args.out), vocab_size=args.vocab_size)))
    return 0


def run_train(args) -> int:
    from ..cli.errors import UserError
    from ..model.device import DTYPE_NAMES, pick_device
    from .data import prepare_text
    from .trainer import train

    if args.save_dtype.strip().lower() not in DTYPE_NAMES:  # checked now, not at the first save
        raise UserError(f"--save-dtype {args.save_dtype!r}: use fp32, bf16 or fp16")
    try:  # checked now, not after preparing the data (a ValueError traceback there)
        pick_device(args.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    data = Path(args.data)
    if data.is_file():  # a raw text file: prepare it beside the output first
        prepared = Path(args.out) / "data"
        if not (prepared / "train.pt").exists():
            prepare_text(data, prepared)
        data = prepared
    if not (data / "train.pt").exists():
        raise SystemExit(f"chatterm: error: {data}: no train.pt here; run `chatterm prepare` first")
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in _SKIP}
    state = train(TrainConfig(data=str(data), out=args.out, **values))
    print(f"done: step {state['step']}, best validation loss {state['best_val']:.4f}, checkpoint in {args.out}")
    return 0


def run_eval(args) -> int:
    import torch

    from ..model import load_checkpoint, pick_dtype
    from ..model.device import dtype_name
    from .trainer import evaluate

    dtype = pick_dtype(args.dtype, torch.device("cpu"))
    ckpt = load_checkpoint(args.checkpoint, precision=dtype and dtype_name(dtype))
    spec = ckpt.meta.get("training", {}).get("val_eval", {})
    batches = args.batches or spec.get("batches", 20)
    seq_len = spec.get("seq_len", ckpt.config.block_size)
    val = torch.load(Path(args.data) / "val.pt", weights_only=True)
    loss = evaluate(ckpt.model, val, seq_len, batches)
    print(f"validation loss {loss:.4f} ({batches} batches of 8 x {seq_len} tokens from {Path(args.data) / 'val.pt'})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m chatterm.train.command")
    add_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args()
    raise SystemExit(a.func(a))
