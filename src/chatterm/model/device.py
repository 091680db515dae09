"""Choose where and in which precision a model runs."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype ("fp32", "bf16", "fp16"), from the one table above; else "?"."""
    return next((name for name, value in DTYPES.items() if value == dtype), "?")


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given ("cpu", "cuda", "cuda:1", "mps"), else the best available."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {requested!r} requested but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


QUANTIZED_BITS = {"int8": 8, "int4": 4}  # weight-only quantized linears, CPU only (quantized_linear.py)


def pick_precision(requested: str | None, device: torch.device) -> tuple[torch.dtype | None, int | None]:
    """(float dtype, quantized bits) for a --dtype value: "int8"/"int4" load the model in fp32 and
    then quantize its linear layers (the caller's job, `pack_linears(model, bits)`); the float
    names behave as in `pick_dtype`, with bits None."""
    bits = QUANTIZED_BITS.get((requested or "").lower())
    if bits is None:
        try:
            return pick_dtype(requested, device), None
        except ValueError:
            raise ValueError(f"unknown dtype {requested!r}; use one of fp32, bf16, fp16, int8, int4") from None
    if device.type != "cpu":
        raise ValueError(f"dtype {requested!r} runs on the CPU only; use --device cpu, or bf16 on {device.type}")
    return torch.float32, bits


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype | None:
    """A torch dtype for "fp32"/"bf16"/"fp16"; None ("auto") keeps the checkpoint's own choice
    on the CPU and uses bf16 (or fp16 where bf16 is unsupported) on a GPU."""
    if requested and requested != "auto":
        try:
            return DTYPES[requested.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {requested!r}; use one of fp32, bf16, fp16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None
