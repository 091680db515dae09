"""Linear layers on chatterm's own CPU kernels (model/native): bf16, 8-bit and 4-bit weights.

- `Bf16Linear`: the weight as bfloat16, activations and results fp32.
- `Q8Linear`: GGUF's Q8_0 layout: blocks of 32 int8 values along the input, one fp16 scale per
  block (`w = q * d`, q in -127..127).
- `Q4Linear`: GGUF's Q4_1 layout: blocks of 32 4-bit values with an fp16 scale and offset per
  block (`w = q * d + m`, q in 0..15); Q4_0 is the case m = -8 d. The grid per block is the
  better of the two (`quantized_linear.quantize_int4`), so weights read from a Q4_0/Q4_1 file go
  back on their own grid.
The quantized layers multiply by activations quantized the same way per block of 32 (as
llama.cpp's CPU path does), in integers; measured held-back log-likelihood in BENCHMARKS.md.

Every layer keeps its tensors in integer dtypes, so converting the rest of the model between
float types (`model.float()`) leaves them alone, and offers `rows(ids)` (dequantized rows: a tied
token embedding reads the output projection's copy, `cpu_linear.TiedEmbedding`) and `dequantized()` (the
fp32 weight it computes with, for checks). Each needs `in_features % 32 == 0` (`fits`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import native
from .quantized_linear import quantize_int4

BLOCK = 32
# Up to this many rows (tokens) at once the kernels' matrix-vector loops run; above it (a
# prompt) the weight is unpacked to fp32 for one float GEMM. Measured on the 2-core EPYC,
# 3072x768 at 16 rows: q8 loop 1.5 ms, unpack + GEMM ~3 ms; at 64 rows 9.8 ms against ~7 ms.
GEMV_ROWS = 16


class NativeLinear(nn.Module):
    """`y = x W^T + b` through one kernels.c function; subclasses hold W."""

    def __init__(self, linear_or_shape, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = linear_or_shape
        # Buffers, not parameters: nothing trains them, and a state_dict must not carry them.
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous(), persistent=False)

    @property
    def _lib(self):
        # Looked up, not stored: a ctypes library cannot be copied with the model (deepcopy).
        return native.library()

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % BLOCK == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).float().contiguous()
        if flat.size(0) > GEMV_ROWS:  # a prompt: a float GEMM on the unpacked weight is faster
            y = torch.nn.functional.linear(flat, self.dequantized(), self.bias)
        else:
            y = torch.empty(flat.size(0), self.out_features)
            bias = self.bias.data_ptr() if self.bias is not None else None
            if self._matvec(flat, bias, y, flat.size(0), torch.get_num_threads()):
                raise MemoryError("the CPU kernel could not allocate its activation buffer")
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight (N, K) this layer computes with."""
        out = torch.empty(self.out_features, self.in_features)
        self._dequantize(out, torch.get_num_threads())
        return out

    def _matvec(self, x, bias, y, m, threads) -> int:
        raise NotImplementedError

    def _dequantize(self, out, threads) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Bf16Linear(NativeLinear):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight.shape, bias)
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Bf16Linear":
        return cls(linear.weight, linear.bias)

    def _matvec(self, x, bias, y, m, threads) -> int:
        self._lib.ct_linear_bf16(x.data_ptr(), self.weight.data_ptr(), bias, y.data_ptr(),
                                 m, self.out_features, self.in_features, threads)
        return 0

    def _dequantize(self, out, threads) -> None:
        self._lib.ct_dequant_bf16(self.weight.data_ptr(), out.data_ptr(), self.out_features, self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].view(torch.bfloat16).float()

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bf16"


def quantize_q8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), d fp16 (N, K/32)) with weight ~= q * d per block of 32 inputs (Q8_0)."""
    w = weight.detach().float()
    n, k = w.shape
    blocks = w.view(n, k // BLOCK, BLOCK)
    d = (blocks.abs().amax(-1) / 127).to(torch.float16)  # rounded first: q is fitted to the scale kept
    safe = torch.where(d > 0, d.float(), torch.ones_like(d, dtype=torch.float32))
    q = torch.round(blocks / safe[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.view(n, k), d


class Q8Linear(NativeLinear):
    def __init__(self, q: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(q.shape, bias)
        # -128 has no positive counterpart for the kernel's sign trick; a quantizer never makes it.
        self.register_buffer("weight", q.to(torch.int8).clamp(-127, 127).contiguous(), persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Q8Linear":
        return cls(*quantize_q8(linear.weight), linear.bias)

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_q8(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(), bias,
                                      y.data_ptr(), m, self.out_features, self.in_features, threads)

    def _dequantize(self, out, threads) -> None:
        self._lib.ct_dequant_q8(self.weight.data_ptr(), self.scale.data_ptr(), out.data_ptr(),
                                self.out_features, self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        q = self.weight[ids].float()
        d = self.scale[ids].view(torch.float16).float()
        return (q.unflatten(-1, (-1, BLOCK)) * d[..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", q8 (blocks of 32)"


class Q4Linear(NativeLinear):
    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None) -> None:
        """q (N, K) in 0..15; d, m (N, K/32): w = q * d + m."""
        super().__init__(q.shape, bias)
        n, k = q.shape
        blocks = q.to(torch.uint8).view(n, k // BLOCK, 2, BLOCK // 2)
        packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)  # byte j: value j (low), value j + 16 (high)
        self.register_buffer("weight", packed.reshape(n, k // 2).contiguous(), persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)
        self.register_buffer("offset", m.to(torch.float16).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Q4Linear":
        q, scale, zero = quantize_int4(linear.weight, BLOCK)  # w = (q - 8) * scale + zero
        return cls(q, scale, zero - 8 * scale, linear.bias)

    def _dequantize(self, out, threads) -> None:
        self._lib.ct_dequant_q4(self.weight.data_ptr(), self.scale.data_ptr(), self.offset.data_ptr(), out.data_ptr(),
                                self.out_features, self.in_features, threads)

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_q4(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(),
                                      self.offset.data_ptr(), bias, y.data_ptr(), m, self.out_features,
                                      self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        packed = self.weight[ids]
        low, high = (packed & 15).unflatten(-1, (-1, BLOCK // 2)), (packed >> 4).unflatten(-1, (-1, BLOCK // 2))
        q = torch.cat((low, high), dim=-1).float()  # (..., K/32, 32)
        d = self.scale[ids].view(torch.float16).float()
        m = self.offset[ids].view(torch.float16).float()
        return (q * d[..., None] + m[..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", q4 (blocks of 32)"


def stored_layer(type_name: str, raw, shape, bias: torch.Tensor | None) -> nn.Module | None:
    """The layer computing with a GGUF tensor's blocks as stored (`raw`: uint8 (N, bytes per
    row), maybe a read-only view of a memory map: copied here), or None for a type without a
    kernel. Q8_0 and Q4_0/Q4_1 blocks are split into the layers' planes without requantizing
    (GGUF's nibble order is ours: byte j holds values j and j + 16)."""
    import numpy as np

    n, k = shape
    if type_name == "BF16":
        return Bf16Linear(torch.from_numpy(np.ascontiguousarray(raw).view(np.int16)).view(torch.bfloat16).reshape(n, k), bias)
    if k % BLOCK:
        return None
    blocks = raw.reshape(n, k // BLOCK, -1)
    if type_name == "Q8_0":
        d = torch.from_numpy(np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(n, -1))
        q = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(n, k))
        return Q8Linear(q, d, bias)
    if type_name in ("Q4_0", "Q4_1"):
        d = torch.from_numpy(np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(n, -1))
        if type_name == "Q4_0":
            m, qs = -8 * d.float(), blocks[:, :, 2:]
        else:
            m, qs = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16).reshape(n, -1)), blocks[:, :, 4:]
        layer = Q4Linear.__new__(Q4Linear)
        NativeLinear.__init__(layer, (n, k), bias)
        layer.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(qs).reshape(n, k // 2)), persistent=False)
        layer.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)
        layer.register_buffer("offset", m.to(torch.float16).contiguous().view(torch.int16), persistent=False)
        return layer
    return None
