"""Choose where and in which precision a model runs.

`check_device` and `check_dtype` validate the names a user writes (`--device`, the config file)
without importing torch, so the config can be checked before the first frame; `pick_device` and
`pick_dtype` turn them into torch objects. A bad name is a ValueError with one line.
"""

from __future__ import annotations

import re

DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}
QUANTIZED_BITS = {"int8": 8, "int4": 4}  # weight-only quantized linears, CPU only (quantized_linear.py)
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d{1,3})?)")


def dtype_name(dtype) -> str:
    """The short name of a torch dtype ("fp32", "bf16", "fp16"), from the one table above; else "?"."""
    return next((short for short, long in DTYPE_NAMES.items() if len(short) == 4 and str(dtype) == f"torch.{long}"), "?")


def check_device(requested: str | None) -> str:
    """The device name, lower-cased: auto, cpu, mps, cuda or cuda:N; ValueError otherwise."""
    name = (requested or "auto").strip().lower()
    if name != "auto" and not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N (N a GPU number) or mps")
    return name


def check_dtype(requested: str | None) -> str:
    """The dtype name: auto or one of fp32, bf16, fp16 (and their long names); ValueError otherwise."""
    name = (requested or "auto").strip().lower()
    if name != "auto" and name not in DTYPE_NAMES and name not in QUANTIZED_BITS:
        raise ValueError(f"unknown dtype {requested!r}; use one of auto, fp32, bf16, fp16, int8, int4")
    return name


def pick_device(requested: str | None = None):
    """`requested` if given ("cpu", "cuda", "cuda:1", "mps"), else the best available."""
    import torch

    name = check_device(requested)
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r}: there are only {torch.cuda.device_count()} CUDA devices")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {requested!r} requested but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def precision_name(requested: str | None, device) -> str | None:
    """The loader's precision for a --dtype value (model/loader.py): None ("auto" on the CPU)
    keeps every tensor as stored; else "fp32", "bf16", "fp16", "int8" or "int4". On a GPU "auto"
    is bf16 (fp16 where bf16 is unsupported); the 8- and 4-bit layers run on the CPU only."""
    name = check_dtype(requested)
    if name in QUANTIZED_BITS:
        if device.type != "cpu":
            raise ValueError(f"dtype {requested!r} runs on the CPU only; use --device cpu, or bf16 on {device.type}")
        return name
    if name != "auto":
        return next(short for short, long in DTYPE_NAMES.items() if len(short) == 4 and long == DTYPE_NAMES[name])
    dtype = pick_dtype(requested, device)
    return None if dtype is None else dtype_name(dtype)


def pick_precision(requested: str | None, device) -> tuple:
    """(float dtype, quantized bits) for a --dtype value: "int8"/"int4" load the model in fp32 and
    then quantize its linear layers (the caller's job, `pack_linears(model, bits)`); the float
    names behave as in `pick_dtype`, with bits None."""
    import torch

    bits = QUANTIZED_BITS.get(check_dtype(requested))
    if bits is None:
        return pick_dtype(requested, device), None
    if device.type != "cpu":
        raise ValueError(f"dtype {requested!r} runs on the CPU only; use --device cpu, or bf16 on {device.type}")
    return torch.float32, bits


def pick_dtype(requested: str | None, device):
    """A torch dtype for "fp32"/"bf16"/"fp16"; None ("auto") keeps the checkpoint's own choice
    on the CPU and uses bf16 (or fp16 where bf16 is unsupported) on a GPU."""
    import torch

    name = check_dtype(requested)
    if name in QUANTIZED_BITS:
        raise ValueError(f"dtype {requested!r} is a quantization, not a float type; use fp32, bf16 or fp16 here")
    if name != "auto":
        return getattr(torch, DTYPE_NAMES[name])
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def __getattr__(name: str):
    if name == "DTYPES":  # name -> torch dtype, imported only when asked for
        import torch

        return {key: getattr(torch, value) for key, value in DTYPE_NAMES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
