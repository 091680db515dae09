"""Linear layers on chatterm's own CPU kernels (model/cpu/native): 16-bit, 8-bit, 4-bit and K-quant weights.

- `Bf16Linear` / `F16Linear`: the weight as bfloat16 / float16, activations and results fp32.
- `Q8Linear`: GGUF's Q8_0 layout: blocks of 32 int8 values along the input, one fp16 scale per
  block (`w = q * d`, q in -127..127); with an fp16 offset per block too where given (`w = q * d
  + m`: GGUF's Q5_1, q in 0..31, held one byte a value).
- `Q4Linear`: GGUF's Q4_1 layout: blocks of 32 4-bit values with an fp16 scale and offset per
  block (`w = q * d + m`, q in 0..15); Q4_0 is the case m = -8 d. The grid per block is the
  better of the two (`torch_quantized.quantize_int4`), so weights read from a Q4_0/Q4_1 file go
  back on their own grid.
- `IQ4NLLinear`: GGUF's IQ4_NL, Q4_0's layout with the nibbles indexing a fixed grid of 16 levels.
- `Q4KLinear`, `Q5KLinear`, `Q6KLinear`, `Q2KLinear`, `Q3KLinear`, `IQ4XSLinear`: GGUF's
  super-blocks of 256 values, kept as stored (layouts in native/kquants.c); activations
  quantized per 256.
The quantized layers multiply by activations quantized the same way per block of 32 (as
llama.cpp's CPU path does), in integers; measured held-back log-likelihood in BENCHMARKS.md.
`stored_layer(type_name, raw, shape, bias)` builds the layer for a GGUF tensor from its stored
bytes, computing with exactly the stored values.

Every layer keeps its tensors in integer dtypes, so converting the rest of the model between
float types (`model.float()`) leaves them alone, and offers `rows(ids)` (dequantized rows: a tied
token embedding reads the output projection's copy, `linear.TiedEmbedding`) and `dequantized()` (the
fp32 weight it computes with, for checks). Each needs `in_features % 32 == 0` (`fits`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import native
from .torch_quantized import quantize_int4

BLOCK = 32
SUPER_BLOCK = 256  # the K-quants' super-block
# Up to this many rows (tokens) at once the kernels' matrix-vector loops run; above it (a
# prompt) the weight is unpacked to fp32 slice by slice for float GEMMs (`chunked_gemm`). Each
# layer class has its own `GEMM_ABOVE`, where its loop stops winning. Measured on the 2-core
# EPYC, 3072x768 at 16 rows: q8 loop 1.5 ms, unpack + GEMM ~3 ms; at 64 rows 9.8 ms against ~7 ms.
# On the AVX-512 Xeon, one thread (CPU time, 2048x2048, `python scripts/kernel_speed.py` and
# its --rows), loop / unpack + GEMM in ms:
#   rows   Q8_0       Q4_0       BF16       F16
#   16     1.8/3.3    2.0/4.1    2.8/3.1    2.4/3.5
#   32     3.5/4.0    3.9/5.3    6.0/3.9    4.9/4.8
#   64     6.8/5.8    7.9/6.7    12.7/5.5   10.6/6.5
#   512    64/28      -          314/27     -
# The K-quant loops take up to 4 rows per pass over a weight row (the weight unpacked once for
# them), against the unpacked GEMM in bf16 (AMX; below):
#   rows   Q4_K       Q5_K       Q6_K       Q2_K       Q3_K       IQ4_XS
#   16     1.4/4.1    1.5/4.0    1.3/4.0    1.1/3.6    1.4/3.6    1.8/5.5
#   32     2.5/4.1    3.1/4.5    2.7/3.8    2.4/3.6    3.0/3.9    3.6/6.0
#   64     5.5/4.5    6.3/4.3    5.3/4.3    4.9/3.9    5.8/4.4    7.4/6.2
# The loops do every row's work again (their cost grows with the rows), while the fp32 GEMM
# runs near this CPU's peak (~160 GFLOP/s a core): an int8 loop with a scale per 32 values on
# both sides does no fewer operations per multiply-add than the float GEMM does, so prompts
# keep the GEMM, on slices of the weight.
GEMV_ROWS = 16
# Where the CPU multiplies bf16 matrices in its AMX tiles (Intel since Sapphire Rapids), a
# prompt's GEMMs run in bf16 with fp32 sums: 3-4x the fp32 GEMM with the unpacking included
# (512 rows, one thread, CPU time, against the whole weight unpacked for an fp32 GEMM: Q8_0
# 2048x2048 7.5 ms against 27.9, Q4_K 8192x2048 42.8 against 143.6). Rounding the activations to bf16 (2^-9 of each) is finer than the 8-bit blocks of
# the decode loops; rounding the weights too costs no more (measured: 3.7e-3 of the largest
# output either way, where the decode loops' rounding costs ~1e-2). Without AMX (AVX2, and
# AVX-512 without it) bf16 GEMMs are slower than fp32 ones, so fp32 stays.
PROMPT_DTYPE = torch.bfloat16 if native.cpu_has("amx_bf16") else torch.float32


class NativeLinear(nn.Module):
    """`y = x W^T + b` through one kernels.c function; subclasses hold W."""

    GEMM_ABOVE = GEMV_ROWS  # more rows than this at once: float GEMMs on slices of W unpacked (chunked_gemm)
    FAMILY = ""  # the kernel family whose variant computes it (kernel_choice.FAMILIES)

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
        if flat.size(0) > self.GEMM_ABOVE:  # a prompt: float GEMMs on slices of the unpacked weight are faster
            y = chunked_gemm(self, flat)
        else:
            y = kernel_product(self, flat)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dequantized(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The fp32 weight (N, K) this layer computes with (rows start..stop: a slice of it)."""
        stop = self.out_features if stop is None else stop
        out = torch.empty(stop - start, self.in_features)
        self._dequantize(out, torch.get_num_threads(), slice(start, stop))
        return out

    def row(self, i: int) -> torch.Tensor:
        """Row i (0 <= i < out_features) of the fp32 weight, (1, in_features), unpacked in one
        kernel call: a decode step's token embedding of a tied model, where `rows`' few PyTorch
        operations, run just after a step has streamed every weight, cost ~0.1 ms."""
        out = torch.empty(1, self.in_features)
        self._dequantize(out, 1, slice(i, i + 1))
        return out

    def _matvec(self, x, bias, y, m, threads) -> int:
        raise NotImplementedError

    def _dequantize(self, out, threads, rows: slice) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def chunked_gemm(layer: NativeLinear, x: torch.Tensor, chunk_bytes: int = 16 << 20,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (M, K) times the weight, unpacked to fp32 one slice of rows at a time (about
    `chunk_bytes` of it) for a float GEMM each: a prompt never widens the whole weight (2 GB for
    a 128k-word output layer). The GEMMs run in `dtype` (default PROMPT_DTYPE), the bias is added
    in fp32. Slices of 16 MB: each slice is a few parallel regions (unpack, convert, GEMM), and
    on a busy 2-core machine a thread waiting at each region's end cost more than the cache
    saved: Q4_K 8192x2048 at 512 rows, 2 threads (process CPU time, bf16) 360 ms in 4 MB slices,
    84 ms in 16 MB ones, 157 ms whole in fp32; one thread (CPU time) 36 ms, 43 ms, 144 ms."""
    n, k = layer.out_features, layer.in_features
    dtype = dtype or PROMPT_DTYPE
    step = max(16, chunk_bytes // (4 * k))
    y = torch.empty(x.size(0), n)
    xd = x.to(dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        y[:, start:stop] = torch.nn.functional.linear(xd, layer.dequantized(start, stop).to(dtype))
    return y if layer.bias is None else y.add_(layer.bias)


def kernel_product(layer: NativeLinear, x: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 contiguous times the layer's weight on its own loops (for any M: the
    decode step's path, and a measurement's)."""
    y = torch.empty(x.size(0), layer.out_features)
    bias = layer.bias.data_ptr() if layer.bias is not None else None
    if layer._matvec(x, bias, y, x.size(0), torch.get_num_threads()):
        raise MemoryError("the CPU kernel could not allocate its activation buffer")
    return y


class Bf16Linear(NativeLinear):
    DTYPE, NAME = torch.bfloat16, "bf16"  # the 16-bit float the weight is kept in, and its kernels' suffix
    FAMILY = NAME

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight.shape, bias)
        self.register_buffer("weight", weight.detach().to(self.DTYPE).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Bf16Linear":
        return cls(linear.weight, linear.bias)

    def _matvec(self, x, bias, y, m, threads) -> int:
        getattr(self._lib, f"ct_linear_{self.NAME}")(x.data_ptr(), self.weight.data_ptr(), bias, y.data_ptr(),
                                                     m, self.out_features, self.in_features, threads)
        return 0

    def _dequantize(self, out, threads, rows: slice) -> None:
        getattr(self._lib, f"ct_dequant_{self.NAME}")(self.weight[rows].data_ptr(), out.data_ptr(), out.size(0),
                                                      self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].view(self.DTYPE).float()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {self.NAME}"


class F16Linear(Bf16Linear):
    """GGUF's F16 weights as stored: bf16's loop, widened with F16C where the CPU has it."""

    DTYPE, NAME = torch.float16, "f16"
    FAMILY = NAME
    GEMM_ABOVE = 24


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
    GEMM_ABOVE = 32  # see GEMV_ROWS
    FAMILY = "q8"

    def __init__(self, q: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None,
                 m: torch.Tensor | None = None) -> None:
        super().__init__(q.shape, bias)
        # -128 has no positive counterpart for the kernel's sign trick; a quantizer never makes it
        # (ggml's and ours round w / (max|w| / 127)). Clamped only if present: no second copy of q,
        # and found with min() (one pass; an == mask was a second q-sized array and two passes).
        q = q.to(torch.int8).contiguous()
        self.register_buffer("weight", q.clamp(-127, 127) if q.numel() and int(q.min()) == -128 else q, persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)
        offset = m.to(torch.float16).contiguous().view(torch.int16) if m is not None else None
        self.register_buffer("offset", offset, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Q8Linear":
        return cls(*quantize_q8(linear.weight), linear.bias)

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_q8(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(), self._offset(),
                                      bias, y.data_ptr(), m, self.out_features, self.in_features, threads)

    def _dequantize(self, out, threads, rows: slice) -> None:
        self._lib.ct_dequant_q8(self.weight[rows].data_ptr(), self.scale[rows].data_ptr(), self._offset(rows),
                                out.data_ptr(), out.size(0), self.in_features, threads)

    def _offset(self, rows: slice = slice(None)) -> int | None:
        return self.offset[rows].data_ptr() if self.offset is not None else None

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        q = self.weight[ids].float()
        d = self.scale[ids].view(torch.float16).float()
        w = q.unflatten(-1, (-1, BLOCK)) * d[..., None]
        if self.offset is not None:
            w = w + self.offset[ids].view(torch.float16).float()[..., None]
        return w.flatten(-2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", q8 (blocks of 32{' with offsets' if self.offset is not None else ''})"


class Q4Linear(NativeLinear):
    GEMM_ABOVE = 32
    FAMILY = "q4"

    def __init__(self, packed: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None) -> None:
        """packed uint8 (N, K/2): block b's byte j holds value j (low nibble) and j + 16 (high), 0..15
        (GGUF's own order); d, m (N, K/32): w = q * d + m."""
        super().__init__((packed.size(0), 2 * packed.size(1)), bias)
        self.register_buffer("weight", packed.to(torch.uint8).contiguous(), persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)
        self.register_buffer("offset", m.to(torch.float16).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Q4Linear":
        q, scale, zero = quantize_int4(linear.weight, BLOCK)  # w = (q - 8) * scale + zero
        n, k = q.shape
        blocks = q.to(torch.uint8).view(n, k // BLOCK, 2, BLOCK // 2)
        packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
        return cls(packed.reshape(n, k // 2), scale, zero - 8 * scale, linear.bias)

    def _dequantize(self, out, threads, rows: slice) -> None:
        self._lib.ct_dequant_q4(self.weight[rows].data_ptr(), self.scale[rows].data_ptr(), self.offset[rows].data_ptr(),
                                out.data_ptr(), out.size(0), self.in_features, threads)

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


class IQ4NLLinear(NativeLinear):
    """GGUF's IQ4_NL: Q4_0's blocks of 32 nibbles and an fp16 scale, each nibble an index into
    a fixed grid of 16 levels (w = d * level[q])."""

    GEMM_ABOVE = 32
    FAMILY = "iq4nl"

    def __init__(self, packed: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None) -> None:
        """packed uint8 (N, K/2) in Q4Linear's (and GGUF's) nibble order; d (N, K/32)."""
        super().__init__((packed.size(0), 2 * packed.size(1)), bias)
        self.register_buffer("weight", packed.to(torch.uint8).contiguous(), persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_iq4nl(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(), bias,
                                         y.data_ptr(), m, self.out_features, self.in_features, threads)

    def _dequantize(self, out, threads, rows: slice) -> None:
        self._lib.ct_dequant_iq4nl(self.weight[rows].data_ptr(), self.scale[rows].data_ptr(), out.data_ptr(),
                                   out.size(0), self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:  # the grid lives in the C code: unpacked there
        flat = ids.reshape(-1)
        weight, scale = self.weight[flat].contiguous(), self.scale[flat].contiguous()
        out = torch.empty(flat.numel(), self.in_features)
        self._lib.ct_dequant_iq4nl(weight.data_ptr(), scale.data_ptr(), out.data_ptr(), out.size(0),
                                   self.in_features, 1)
        return out.view(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", iq4_nl (blocks of 32)"


class KQuantLinear(NativeLinear):
    """A K-quant weight as GGUF stores it: each row K / 256 super-blocks of BLOCK_BYTES bytes."""

    TYPE = -1  # kquants.c's CT_Q4_K .. CT_IQ4_XS
    BLOCK_BYTES = 0
    GEMM_ABOVE = 32  # the loops take up to 4 rows per pass over the weight: see GEMV_ROWS
    FAMILY = "kq"

    def __init__(self, blocks: torch.Tensor, shape: tuple[int, int], bias: torch.Tensor | None) -> None:
        """blocks: uint8 (N, K / 256 * BLOCK_BYTES), the stored bytes (kept, not copied)."""
        super().__init__(shape, bias)
        n, k = shape
        if k % SUPER_BLOCK or tuple(blocks.shape) != (n, k // SUPER_BLOCK * self.BLOCK_BYTES):
            raise ValueError(f"{type(self).__name__}: {tuple(blocks.shape)} bytes do not hold a {n}x{k} weight")
        self.register_buffer("weight", blocks.to(torch.uint8).contiguous(), persistent=False)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % SUPER_BLOCK == 0

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_kq(self.TYPE, x.data_ptr(), self.weight.data_ptr(), bias, y.data_ptr(), m,
                                      self.out_features, self.in_features, threads)

    def _dequantize(self, out, threads, rows: slice) -> None:
        self._dequantize_blocks(self.weight[rows], out, threads)

    def _dequantize_blocks(self, blocks: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        self._lib.ct_dequant_kq(self.TYPE, blocks.data_ptr(), out.data_ptr(), out.size(0), self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        picked = self.weight[ids.reshape(-1)].contiguous()
        out = torch.empty(picked.size(0), self.in_features)
        self._dequantize_blocks(picked, out, 1)
        return out.view(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {type(self).__name__[:-6]} (super-blocks of 256)"


class Q4KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES = 0, 144


class Q5KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES = 1, 176


class Q6KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES = 2, 210


class Q2KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES = 3, 84


class Q3KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES = 4, 110


class IQ4XSLinear(KQuantLinear):
    """IQ4_XS: super-blocks of 256 whose 8 sub-blocks have a 6-bit scale and 4-bit indexes into
    a fixed non-uniform grid of 16 levels (not a K-quant, but read by the same loops)."""

    TYPE, BLOCK_BYTES = 5, 136


class StackedLinear(nn.Module):
    """Layers with one input whose outputs follow one another: a fused projection (q, k and v;
    gate and up) whose parts a GGUF file stores as different types (a Q4_K_M file's attn_v is
    Q6_K where attn_q is Q4_K). Each part keeps its own kernel and bias; the fused decode step
    runs the parts in turn (kernels.c's CT_STACKED)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        if any(part.in_features != parts[0].in_features for part in parts):
            raise ValueError("stacked layers need one input width")
        self.parts = nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(part.out_features for part in parts)
        self.bias = None  # the parts' own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)

    def dequantized(self) -> torch.Tensor:
        return torch.cat([part.dequantized() for part in self.parts])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dequantized()[ids]  # for checks: a stacked projection is not an embedding


def stack_layers(parts: list[nn.Module]) -> nn.Module:
    """One layer computing the parts' outputs one after another (q, k, v -> qkv). Parts of one
    kernel class with the same planes become one layer of that class, their rows (and biases,
    zeros where a part has none) concatenated; other parts a StackedLinear."""
    first = parts[0]
    if not isinstance(first, NativeLinear) or any(
            type(part) is not type(first) or _planes(part) != _planes(first) for part in parts):
        return StackedLinear(parts)
    if any(part.in_features != first.in_features for part in parts):
        raise ValueError("stacked layers need one input width")
    merged = copy.copy(first)  # the class and its attributes; the buffers are replaced below
    merged._parameters, merged._modules = {}, {}
    merged._buffers = {name: None if tensor is None else torch.cat([part._buffers[name] for part in parts])
                       for name, tensor in first._buffers.items() if name != "bias"}
    merged._non_persistent_buffers_set = set(first._non_persistent_buffers_set)
    merged.out_features = sum(part.out_features for part in parts)
    biases = [part.bias for part in parts]
    merged._buffers["bias"] = None if all(b is None for b in biases) else torch.cat(
        [torch.zeros(part.out_features) if b is None else b for part, b in zip(parts, biases)])
    return merged


def _planes(layer: nn.Module) -> set[str]:
    """The buffers a layer holds besides its bias (a Q8Linear from Q5_1 has offsets, from Q8_0 not)."""
    return {name for name, tensor in layer._buffers.items() if tensor is not None and name != "bias"}


# ---- GGUF tensors as stored -> layers -----------------------------------------------------
