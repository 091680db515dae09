"""`chatterm convert SRC DST`: a GPT-2-family checkpoint in any supported format, written as
chatterm's own (a folder: model.safetensors + chatterm.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError


def add_parser(sub) -> None:
    conv = sub.add_parser("convert", help="convert a checkpoint to chatterm's safetensors format")
    conv.add_argument("src", help="checkpoint to read (any supported format)")
    conv.add_argument("dst", help="folder to write (a new or empty one, or any with --force)")
    conv.add_argument("--force", action="store_true", help="replace the checkpoint files in a folder that has files")
    conv.add_argument("--n-head", type=int, help="attention heads, for plain state dicts without a config")
    conv.add_argument("--dtype", default=None, help="store weights as fp32, bf16 or fp16 (default: as loaded)")
    conv.set_defaults(func=cmd_convert)


def _check_convert_destination(dst: Path, force: bool) -> None:
    """Like /save: a folder that already holds files is written to only with --force (it may
    be another checkpoint), and never anything but a folder."""
    if not dst.exists() and not dst.is_symlink():
        return
    if not dst.is_dir():
        raise UserError(f"{dst}: is not a folder; convert writes a folder (model.safetensors + chatterm.json), "
                        "choose another path")
    if any(dst.iterdir()) and not force:
        raise UserError(f"{dst}: already holds files; add --force to write the checkpoint into it")


def cmd_convert(args: argparse.Namespace) -> int:
    from ..model import load_checkpoint, pick_dtype, save_checkpoint
    from ..model.checkpoint import checkpoint_family
    from ..model.device import dtype_name
    from ..session.sanitize import printable

    try:
        dtype = pick_dtype(args.dtype, __import__("torch").device("cpu"))
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_convert_destination(Path(args.dst).expanduser(), args.force)
    family = checkpoint_family(args.src, n_head=args.n_head)  # before any weight is read
    if family != "gpt2":  # chatterm's format holds GPT configs only
        raise UserError(f"{args.src}: converting {family} models is not supported; "
                        "chatterm opens this file or folder directly")
    ckpt = load_checkpoint(args.src, precision=dtype and dtype_name(dtype), n_head=args.n_head)
    meta = dict(ckpt.meta)
    if "tokenizer" not in meta and ckpt.config.vocab_size >= 50257:
        meta["tokenizer"] = {"type": "gpt2"}
    meta.setdefault("name", ckpt.name)
    meta["converted_from"] = {"path": str(ckpt.path), "format": ckpt.format}
    out = save_checkpoint(args.dst, ckpt.model, meta)
    print(printable(f"wrote {out} ({ckpt.format} -> chatterm, {ckpt.model.num_params():,} parameters)"))
    return 0
