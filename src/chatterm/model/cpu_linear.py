"""Linear layers through oneDNN with prepacked weights, for inference on the CPU.

Why: on the CPU `F.linear` goes to MKL, whose fp32 matrix-vector product (the whole of a decode
step) runs on one thread and, on AMD CPUs, takes a slow generic path. Measured on a 2-core EPYC
(torch 2.13), the 49 linear layers of GPT-2 small at batch 1: 28.2 ms with `F.linear`, 11.6 ms
with oneDNN on weights reordered once into its blocked layout; prefill matmuls gain 2.5x too.
This is the path `torch.compile` (inductor, with freezing) takes for CPU linears, without the
compile: it costs one reorder per weight at load time.

`pack_linears(model)` swaps every `nn.Linear` for a `PackedLinear` holding the reordered weight.
The model is then for inference only: packed weights have no gradient, cannot change device or
dtype, and are not in `state_dict()` (checkpoints are saved from an unpacked model). A tied
output projection gets its own packed copy, because the embedding lookup still needs the plain
matrix. The swap is verified against `F.linear` on one layer first and skipped, model untouched,
wherever oneDNN is missing, refuses the dtype or disagrees.

`pack_linears(model, bits=8)` (or 4) is the same swap to weight-only quantized layers
(quantized_linear.py). There a tied output projection is quantized to int8 once and the token
embedding reads its rows from that copy, so the float vocabulary matrix is dropped: the model
holds one 8-bit vocabulary matrix (38 MB for GPT-2 small, against 154 + 154 MB packed at fp32).
At 4 bits the tied projection stays 8-bit too: it is the layer most sensitive to rounding, and
its rows double as the embeddings. The first layer is checked against its dequantized matmul.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantized_linear import (Int4Linear, Int8Embedding, Int8Linear, dequantized_reference, quantize_linear,
                               quantized_kernels_available)

_SUPPORTED = {torch.float32: None, torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's reordered layout (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        # Buffers, not parameters: nothing trains them, and a state_dict must not carry them.
        self.register_buffer("weight", packed, persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias, "none", [], "")
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(model: nn.Module) -> bool:
    """True when this torch build, device and dtype support packed oneDNN linears."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype not in _SUPPORTED:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False
    check = _SUPPORTED[param.dtype]
    return check is None or bool(getattr(ops, check, lambda: False)())


def pack_linears(model: nn.Module, bits: int | None = None) -> int:
    """Swap every nn.Linear in `model` for a PackedLinear (`bits=None`) or a weight-only int8/int4
    layer (`bits=8`/`4`); return how many were swapped (0 when unsupported here or the check
    fails, the model then left exactly as it was)."""
    if not (can_pack(model) if bits is None else can_quantize(model, bits)):
        return 0
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears or not (_agrees(linears[0][1]) if bits is None else _quantized_agrees(linears[0][1], bits)):
        return 0
    tied = _tied_embeddings(model, linears) if bits is not None else {}
    count = len(linears)
    while linears:  # popped, so each float weight is freed as soon as its layer is swapped
        name, linear = linears.pop(0)
        if bits is None:
            replacement = PackedLinear(linear)
        elif id(linear.weight) in tied:
            replacement = Int8Linear.from_linear(linear)
            embedding_name, embedding = tied.pop(id(linear.weight))
            _replace(model, embedding_name, Int8Embedding(replacement, embedding.weight.dtype))
            embedding = None
        else:
            replacement = quantize_linear(linear, bits)
        _replace(model, name, replacement)
        del linear, replacement
    if bits is not None:
        _copy_float_tensors(model)
    _return_freed_memory()
    return count


def can_quantize(model: nn.Module, bits: int) -> bool:
    """True when the weight-only kernels for `bits` run here (CPU, float weights)."""
    param = next(model.parameters(), None)
    return (param is not None and param.device.type == "cpu" and param.dtype.is_floating_point
            and bits in (4, 8) and quantized_kernels_available(bits))


def _copy_float_tensors(model: nn.Module) -> None:
    """Give the float tensors left after quantizing (norms, biases, position table) their own
    memory. Loaded from safetensors they are views of the memory-mapped file, and one view keeps
    all of the file's pages that quantizing read resident: measured on GPT-2 small, 584 MB of
    file pages on top of 439 MB of our own after loading at int8."""
    with torch.no_grad():
        for module in model.modules():
            for key, tensor in module._parameters.items():
                if tensor is not None:
                    module._parameters[key] = nn.Parameter(tensor.detach().clone(), requires_grad=False)
            for key, tensor in module._buffers.items():
                if tensor is not None and tensor.is_floating_point():
                    module._buffers[key] = tensor.clone()


def _tied_embeddings(model: nn.Module, linears) -> dict:
    """{id(weight): (name, embedding)} for embeddings sharing their weight with one of `linears`."""
    weights = {id(linear.weight) for _, linear in linears}
    return {id(m.weight): (name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and id(m.weight) in weights}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def _return_freed_memory() -> None:
    """The unpacked weights are freed, but glibc keeps the pages in its heap (220 MB of a 540 MB
    model, measured on SmolLM2-135M); hand them back to the system. A no-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _agrees(linear: nn.Linear) -> bool:
    """One layer, packed, gives F.linear's result on a random input (a build that accepts the
    call but computes something else must not slip through)."""
    try:
        with torch.inference_mode():
            x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0)).to(linear.weight.dtype)
            want = F.linear(x, linear.weight, linear.bias).float()
            got = PackedLinear(linear)(x).float()
    except RuntimeError:
        return False
    tolerance = 1e-4 if linear.weight.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(got, want, rtol=tolerance, atol=tolerance * float(want.abs().max().clamp(min=1))))


def _quantized_agrees(linear: nn.Linear, bits: int) -> bool:
    """One layer, quantized, gives the matmul of its own dequantized weight (up to bf16
    rounding): catches a kernel whose layout or zero-point convention is not the one assumed."""
    try:
        with torch.inference_mode():
            x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
            got = quantize_linear(linear, bits)(x).float()
            want = F.linear(x, dequantized_reference(linear.weight, bits if Int4Linear.fits(linear) else 8), linear.bias)
    except RuntimeError:
        return False
    return bool(torch.allclose(got, want.float(), rtol=2e-2, atol=2e-2 * float(want.abs().max().clamp(min=1e-6))))
