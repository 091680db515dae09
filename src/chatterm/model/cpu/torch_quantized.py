"""Weight-only 8-bit and 4-bit linear layers for CPU decoding, through PyTorch's own kernels.

Why: a decode step reads every weight once, so its speed is the bytes it reads. int8 weights
are a quarter of fp32, int4 an eighth. The activations stay in floating point (bf16 inside the
kernel), so nothing about the model's arithmetic changes except the rounding of the weights.

- `Int8Linear`: per-output-channel symmetric int8 (`w = q * scale`, q in -127..127), computed by
  `torch.ops.aten._weight_int8pack_mm`. Measured on the 2-core EPYC (AVX2, one thread, 768x3072):
  0.18 ms against 0.25-0.60 ms for oneDNN's packed fp32 (see BENCHMARKS.md).
- `Int4Linear`: groups of 32 along the input (`w = (q - 8) * scale + zero`, q in 0..15; see
  `quantize_int4` for the grid), computed by `torch.ops.aten._weight_int4pack_mm_for_cpu` on the weight packed once by
  `_convert_weight_to_int4pack_for_cpu`. It needs out_features % 16 == 0 and in_features % 32 == 0;
  `quantize_linear` falls back to int8 for layers that do not fit.

These are the fallback where chatterm's own kernels (native_linear.py) cannot be built (no C
compiler) or a layer's shape does not fit them; `Int8Linear.rows` lets a tied token embedding
read its rows (linear.TiedEmbedding).

Both kernels take bf16 activations (with fp32 they take a path ~10x slower); the layers convert
on the way in and back to the caller's dtype on the way out, so the rest of the model runs in
whatever float dtype it was loaded in. Built from a float `nn.Linear` (quantized here) or from
already-quantized values (`Int8Linear.from_quantized`, GGUF).
"""

from __future__ import annotations

import torch
import torch.nn as nn

INT4_GROUP = 32  # the block size of GGUF's Q4_0/Q4_1/Q4_K sub-blocks, so their scales carry over
_KERNEL_DTYPE = torch.bfloat16


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), scale fp32 (N,)) with weight ~= q * scale[:, None], per output channel."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (N,)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 (N, K) in 0..15, scale (N, K/group), zero (N, K/group)) with
    weight ~= (q - 8) * scale + zero within each group of `group` inputs.

    Two grids per group, the one with the smaller squared error kept: min/max (asymmetric, as
    GGUF's Q4_1 stores) and zero-centred with the largest-magnitude value at q = 0 (as Q4_0
    stores, the scale possibly negative). So weights dequantized from a Q4_0 or Q4_1 file are
    put back on their own grid, exactly up to the bf16 rounding of scale and zero."""
    w = weight.detach().float()
    n, k = w.shape
    groups = w.view(n, k // group, group)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, K/group)
    scale_a = ((high - low) / 15).clamp(min=1e-12)
    zero_a = low + 8 * scale_a
    peak = torch.where(high.abs() > low.abs(), high, low)
    scale_b = torch.where(peak.abs() > 1e-12, peak / -8, torch.full_like(peak, 1e-12))
    zero_b = torch.zeros_like(peak)

    def fit(scale, zero):
        q = torch.round((groups - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15)
        error = ((q - 8) * scale[..., None] + zero[..., None] - groups).pow(2).sum(-1)
        return q, error

    q_a, error_a = fit(scale_a, zero_a)
    q_b, error_b = fit(scale_b, zero_b)
    use_b = error_b < error_a  # (N, K/group)
    q = torch.where(use_b[..., None], q_b, q_a).to(torch.int32).view(n, k)
    return q, torch.where(use_b, scale_b, scale_a), torch.where(use_b, zero_b, zero_a)


def dequantized_reference(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The float weight a layer quantized from `weight` computes with (fp32, for checks)."""
    if bits == 8:
        q, scale = quantize_int8(weight)
        return q.float() * scale.to(_KERNEL_DTYPE).float()[:, None]
    q, scale, zero = quantize_int4(weight)
    n, k = q.shape
    scale, zero = scale.to(_KERNEL_DTYPE).float(), zero.to(_KERNEL_DTYPE).float()
    return ((q.view(n, scale.size(1), -1).float() - 8) * scale[..., None] + zero[..., None]).view(n, k)


class Int8Linear(nn.Module):
    """`y = x (q * scale)^T + b` with int8 q; see the module docstring."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        # Buffers, not parameters: nothing trains them, and a state_dict must not carry them.
        self.register_buffer("weight", q.contiguous(), persistent=False)
        self.register_buffer("scale", scale.to(_KERNEL_DTYPE), persistent=False)
        self.register_buffer("bias", bias.detach() if bias is not None else None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_int8(linear.weight), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(_KERNEL_DTYPE), self.weight, self.scale)
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias, y).to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows (fp32): a tied token embedding reads them (linear.TiedEmbedding)."""
        return self.weight[ids].float() * self.scale[ids].float().unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int4Linear(nn.Module):
    """`y = x W^T + b` with W in 4-bit groups of `INT4_GROUP`; see the module docstring."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = self.in_features // scale.size(1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        scale_and_zero = torch.stack((scale.t(), zero.t()), dim=-1)  # (K/group, N, 2): the kernel's layout
        self.register_buffer("weight", packed, persistent=False)
        self.register_buffer("scale_and_zero", scale_and_zero.to(_KERNEL_DTYPE).contiguous(), persistent=False)
        self.register_buffer("bias", bias.detach() if bias is not None else None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int4Linear":
        return cls(*quantize_int4(linear.weight), linear.bias)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.out_features % 16 == 0 and linear.in_features % INT4_GROUP == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(_KERNEL_DTYPE), self.weight, self.group, self.scale_and_zero
        )
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias, y).to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int4 g{self.group}"


def quantized_kernels_available(bits: int) -> bool:
    """True when this torch build has the weight-only kernel for `bits` (8 or 4) on the CPU."""
    ops = torch.ops.aten
    if bits == 8:
        return hasattr(ops, "_weight_int8pack_mm")
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def quantize_linear(linear: nn.Linear, bits: int) -> nn.Module:
    """The int8 or int4 replacement of `linear` (int8 where the int4 kernel's shape rules fail)."""
    if bits == 4 and Int4Linear.fits(linear):
        return Int4Linear.from_linear(linear)
    return Int8Linear.from_linear(linear)
