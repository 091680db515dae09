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

A bf16 model takes chatterm's own bf16 kernel instead (native_linear.py; oneDNN's bf16 path
needs AVX-512 or AVX-NE-CONVERT, and MKL's bf16 GEMV was measured at half the bus speed), with
the rest of the model (norms, biases, attention, the KV cache) in fp32, as llama.cpp computes.

`pack_linears(model, bits=8)` (or 4) is the same swap to weight-only quantized layers: chatterm's
own Q8_0/Q4_1-style kernels (native_linear.py), or PyTorch's (quantized_linear.py) where those
cannot be built. The tied output projection (and at bf16 its bf16 copy) is built once and the
token embedding reads its rows from it (`TiedEmbedding`), so the float vocabulary matrix is
dropped: the model holds one 8-bit vocabulary matrix (38 MB for GPT-2 small, against 154 + 154
MB packed at fp32). At 4 bits the tied projection stays 8-bit: it is the layer most sensitive
to rounding, and its rows double as the embeddings. The first layer is checked against the
matmul of the weight it holds.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .native_linear import Bf16Linear, NativeLinear, Q4Linear, Q8Linear, StackedLinear
from .torch_quantized import Int4Linear, Int8Linear, dequantized_reference, quantize_linear, quantized_kernels_available

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
    return param is not None and param.device.type == "cpu" and _can_pack_dtype(param.dtype)


def pack_linears(model: nn.Module, bits: int | None = None) -> int:
    """Swap every nn.Linear in `model` for a faster CPU layer; return how many were swapped (0
    when nothing applies here or the first layer's check fails, the model then left exactly as
    it was). `bits=None`: an fp32 model gets oneDNN-packed layers, a bf16 model chatterm's bf16
    kernel (and the rest of the model fp32, as llama.cpp computes). `bits=8`/`4`: weight-only
    quantized layers, chatterm's kernels where they build (native_linear.py), else PyTorch's."""
    make = _layer_maker(model, bits)
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if make is None or not linears or not _swap_agrees(linears[0][1], make, bits):
        return 0
    # The tied output projection is built once, in 8 bits when quantizing (the most
    # rounding-sensitive matrix; llama.cpp keeps it wider too), and the embedding reads its rows.
    tied = _tied_embeddings(model, linears) if make is not PackedLinear else {}
    tied_make = make if bits is None else _layer_maker(model, 8)
    count = len(linears)
    while linears:  # popped, so each float weight is freed as soon as its layer is swapped
        name, linear = linears.pop(0)
        if id(linear.weight) in tied:
            replacement = tied_make(linear)
            embedding_name, _ = tied.pop(id(linear.weight))  # dropped: its rows come from the table
            replace_module(model, embedding_name, TiedEmbedding(replacement, torch.float32))
        else:
            replacement = make(linear)
        replace_module(model, name, replacement)
        del linear, replacement
    if make is not PackedLinear:
        _copy_float_tensors(model)  # as fp32: the native and quantized layers compute in it
    if native.library() is not None and make is not PackedLinear:
        # The attention kernels read an fp16 cache (as llama.cpp's default): half the bytes a
        # long chat's attention reads per token, and half the cache's memory.
        model.kv_cache_dtype = torch.float16
    return_freed_memory()
    return count


def float_linear_layer(linear: nn.Linear) -> nn.Module:
    """The CPU layer for a float linear that stays in its dtype (fp32 as stored, or asked for):
    oneDNN-packed where this build packs that dtype and agrees with F.linear, else as it is."""
    key = ("packed", linear.weight.dtype)
    if key not in _AGREES:
        _AGREES[key] = _can_pack_dtype(linear.weight.dtype) and _agrees(linear)
    return PackedLinear(linear) if _AGREES[key] else linear


def quantized_layer(linear: nn.Linear, bits: int) -> nn.Module:
    """The weight-only `bits` (8 or 4) layer quantized from a float linear: chatterm's kernels
    where they build, else PyTorch's; ValueError where neither exists here. The first layer of
    each kind is checked against the matmul of the weight it holds (`_swap_agrees`)."""
    make = _layer_maker_for(torch.float32, bits)
    key = ("quantized", bits)
    if make is not None and key not in _AGREES:
        _AGREES[key] = _swap_agrees(linear, make, bits)
    if make is None or not _AGREES[key]:
        raise ValueError(f"this torch build has no weight-only int{bits} kernel that works here; use bf16 or fp32")
    return make(linear)


# (kind, dtype or bits) -> whether the first layer of that kind agreed with F.linear (a process
# checks each kind once: a build that accepts the call but computes something else is caught).
_AGREES: dict = {}


def _can_pack_dtype(dtype: torch.dtype) -> bool:
    if dtype not in _SUPPORTED or not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False
    check = _SUPPORTED[dtype]
    return check is None or bool(getattr(ops, check, lambda: False)())


def _layer_maker(model: nn.Module, bits: int | None):
    """linear -> replacement for this model and `bits`, or None when nothing applies here."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or not param.dtype.is_floating_point:
        return None
    return _layer_maker_for(param.dtype, bits, model)


def _layer_maker_for(dtype: torch.dtype, bits: int | None, model: nn.Module | None = None):
    """linear -> replacement for float weights of `dtype` and `bits`, or None."""
    native_ok = native.library() is not None
    if bits is None:
        if dtype == torch.bfloat16 and native_ok:
            return Bf16Linear.from_linear
        return PackedLinear if model is not None and can_pack(model) else None
    if bits not in (4, 8):
        return None
    if native_ok:
        kind = Q8Linear if bits == 8 else Q4Linear
        fallback = _layer_maker_torch(bits)
        return lambda linear: kind.from_linear(linear) if kind.fits(linear) or fallback is None else fallback(linear)
    return _layer_maker_torch(bits)


def _layer_maker_torch(bits: int):
    """PyTorch's weight-only kernels (no C compiler here, or a layer shape ours do not take)."""
    if not quantized_kernels_available(bits):
        return None
    return lambda linear: quantize_linear(linear, bits)


class TiedEmbedding(nn.Module):
    """Token embeddings read from the output projection's rows (`table.rows(ids)`), so a tied
    model keeps one copy of the vocabulary matrix, in the projection's format."""

    def __init__(self, table: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 1 and isinstance(self.table, NativeLinear):  # a decode step's one token
            i = int(ids)
            if 0 <= i < self.num_embeddings:  # (out of range: `rows` raises PyTorch's IndexError)
                return self.table.row(i).view(*ids.shape, self.embedding_dim).to(self.dtype)
        return self.table.rows(ids).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim} (shared with the output projection)"


def linear_kinds(model: nn.Module) -> str:
    """What computes the model's linear layers, e.g. "48 Q8Linear, 1 Bf16Linear" (for reports)."""
    from collections import Counter

    kinds = Counter(type(m).__name__ for m in model.modules()
                    if isinstance(m, (nn.Linear, PackedLinear, NativeLinear, Int8Linear, Int4Linear)))
    return ", ".join(f"{count} {name}" for name, count in kinds.most_common())


def weights_label(model: nn.Module) -> str:
    """What the linear layers hold, most weights first: "Q4_K+Q6_K" for a Q4_K_M file as stored,
    "bf16", "fp32", "Q8_0" (chatterm's 8-bit layers are Q8_0 blocks, whether stored or made)."""
    from collections import Counter

    weights: Counter = Counter()
    for m in model.modules():
        if isinstance(m, (StackedLinear, TiedEmbedding)):
            continue
        kind = getattr(m, "stored_type", None) or _KIND_LABELS.get(type(m))
        if kind is None and isinstance(m, nn.Linear):
            from .device import dtype_name

            kind = dtype_name(m.weight.dtype)
        if kind is not None:
            weights[kind] += m.in_features * m.out_features
    names = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}
    return "+".join(names.get(kind, kind) for kind, _ in weights.most_common(2)) or "-"


_KIND_LABELS = {Bf16Linear: "bf16", Q8Linear: "Q8_0", Q4Linear: "Q4_1", PackedLinear: "fp32", Int8Linear: "int8",
                Int4Linear: "int4"}


def _copy_float_tensors(model: nn.Module) -> None:
    """Give the float tensors left after swapping (norms, biases, position table) their own
    memory, as fp32. Loaded from safetensors they are views of the memory-mapped file, and one
    view keeps all of the file's pages that quantizing read resident: measured on GPT-2 small,
    584 MB of file pages on top of 439 MB of our own after loading at int8. fp32 because the
    swapped layers take and give fp32 (the quantized layers' own tensors are integers, or bf16
    for PyTorch's kernels, and stay as they are)."""
    swapped = (NativeLinear, Int8Linear, Int4Linear)
    with torch.no_grad():
        for module in model.modules():
            for key, tensor in module._parameters.items():
                if tensor is not None:
                    module._parameters[key] = nn.Parameter(tensor.detach().float().clone(), requires_grad=False)
            keep_dtype = isinstance(module, swapped)  # e.g. PyTorch's int8 kernel wants bf16 scales
            for key, tensor in module._buffers.items():
                if tensor is not None and tensor.is_floating_point():
                    module._buffers[key] = (tensor if keep_dtype else tensor.float()).clone()


def _tied_embeddings(model: nn.Module, linears) -> dict:
    """{id(weight): (name, embedding)} for embeddings sharing their weight with one of `linears`."""
    weights = {id(linear.weight) for _, linear in linears}
    return {id(m.weight): (name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and id(m.weight) in weights}


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def return_freed_memory() -> None:
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
    return _close(got, want, 1e-4 if linear.weight.dtype == torch.float32 else 2e-2, floor=1.0)


def _swap_agrees(linear: nn.Linear, make, bits: int | None) -> bool:
    """One layer, swapped, gives the matmul of the weight it holds (`dequantized()`, or the
    reference dequantization for PyTorch's kernels): catches a kernel that accepts the call but
    computes something else, or a layout or zero-point convention other than the one assumed."""
    if make is PackedLinear:
        return _agrees(linear)
    try:
        with torch.inference_mode():
            x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
            layer = make(linear)
            if hasattr(layer, "dequantized"):
                weight = layer.dequantized()
            else:
                weight = dequantized_reference(linear.weight, bits if isinstance(layer, Int4Linear) else 8)
            got = layer(x).float()
            want = F.linear(x, weight, None if linear.bias is None else linear.bias.float())
    except (RuntimeError, MemoryError):
        return False
    return _close(got, want, 2e-2, floor=1e-6)


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float, floor: float) -> bool:
    """`got` equals `want` within `tolerance` of want's largest finite magnitude (at least
    `floor`). A checkpoint's NaN or infinite weights give the same non-finite outputs on both
    sides and compare equal: they are the model's problem, reported when it replies ("no finite
    logits"), not a reason to fail loading with a traceback (a NaN tolerance used to raise)."""
    scale = float(want.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs().max().clamp(min=floor))
    return bool(torch.allclose(got, want, rtol=tolerance, atol=tolerance * scale, equal_nan=True))
