"""Linear layers on chatterm's own CPU kernels (model/native): 16-bit, 8-bit, 4-bit and K-quant weights.

- `Bf16Linear` / `F16Linear`: the weight as bfloat16 / float16, activations and results fp32.
- `Q8Linear`: GGUF's Q8_0 layout: blocks of 32 int8 values along the input, one fp16 scale per
  block (`w = q * d`, q in -127..127).
- `Q4Linear`: GGUF's Q4_1 layout: blocks of 32 4-bit values with an fp16 scale and offset per
  block (`w = q * d + m`, q in 0..15); Q4_0 is the case m = -8 d. The grid per block is the
  better of the two (`quantized_linear.quantize_int4`), so weights read from a Q4_0/Q4_1 file go
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
token embedding reads the output projection's copy, `cpu_linear.TiedEmbedding`) and `dequantized()` (the
fp32 weight it computes with, for checks). Each needs `in_features % 32 == 0` (`fits`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import native
from .quantized_linear import quantize_int4

BLOCK = 32
SUPER_BLOCK = 256  # the K-quants' super-block
# Up to this many rows (tokens) at once the kernels' matrix-vector loops run; above it (a
# prompt) the weight is unpacked to fp32 slice by slice for float GEMMs (`chunked_gemm`). Each
# layer class has its own `GEMM_ABOVE`, where its loop stops winning. Measured on the 2-core
# EPYC, 3072x768 at 16 rows: q8 loop 1.5 ms, unpack + GEMM ~3 ms; at 64 rows 9.8 ms against ~7 ms.
# On the AVX-512 Xeon, one thread (CPU time, 2048x2048, `python scripts/kernel_speed.py` and
# its --rows), loop / unpack + GEMM in ms:
#   rows   Q8_0       Q4_0       Q4_K       Q5_K       Q6_K       BF16       F16        Q2_K       Q3_K
#   16     1.8/3.3    2.0/4.1    2.6/3.9    3.8/4.2    2.5/3.5    2.8/3.1    2.4/3.5    2.1/4.0    3.0/3.8
#   32     3.5/4.0    3.9/5.3    5.2/5.1    7.5/4.9    4.9/4.5    6.0/3.9    4.9/4.8    4.4/4.8    6.1/4.7
#   64     6.8/5.8    7.9/6.7    10.7/6.8   14.7/6.7   9.9/6.1    12.7/5.5   10.6/6.5   8.7/6.2    12.2/6.1
#   512    64/28      -          85/27      -          -          314/27     -          -
# The loops do every row's work again (their cost grows with the rows), while the fp32 GEMM
# runs near this CPU's peak (~160 GFLOP/s a core): an int8 loop with a scale per 32 values on
# both sides does no fewer operations per multiply-add than the float GEMM does, so prompts
# keep the GEMM, on slices of the weight.
GEMV_ROWS = 16
# Where the CPU multiplies bf16 matrices in its AMX tiles (Intel since Sapphire Rapids), a
# prompt's GEMMs run in bf16 with fp32 sums: 3x the fp32 GEMM with the unpacking included
# (Q8_0 2048x2048 at 512 rows 8.7 ms against 26; Q4_K 8192x2048 40 ms against 121; one thread,
# CPU time). Rounding the activations to bf16 (2^-9 of each) is finer than the 8-bit blocks of
# the decode loops; rounding the weights too costs no more (measured: 3.7e-3 of the largest
# output either way, where the decode loops' rounding costs ~1e-2). Without AMX (AVX2, and
# AVX-512 without it) bf16 GEMMs are slower than fp32 ones, so fp32 stays.
PROMPT_DTYPE = torch.bfloat16 if native.cpu_has("amx_bf16") else torch.float32


class NativeLinear(nn.Module):
    """`y = x W^T + b` through one kernels.c function; subclasses hold W."""

    GEMM_ABOVE = GEMV_ROWS  # more rows than this at once: widen W to fp32 for one float GEMM

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
            y = prompt_product(self, flat)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dequantized(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The fp32 weight (N, K) this layer computes with (rows start..stop: a slice of it)."""
        stop = self.out_features if stop is None else stop
        out = torch.empty(stop - start, self.in_features)
        self._dequantize(out, torch.get_num_threads(), slice(start, stop))
        return out

    def _matvec(self, x, bias, y, m, threads) -> int:
        raise NotImplementedError

    def _dequantize(self, out, threads, rows: slice) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def chunked_gemm(layer: NativeLinear, x: torch.Tensor, chunk_bytes: int = 4 << 20,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (M, K) times the weight, unpacked to fp32 one slice of rows at a time (about
    `chunk_bytes` of it) for a float GEMM each: a prompt never widens the whole weight (2 GB for
    a 128k-word output layer), and a slice stays in the cache while the GEMM reads it. Measured
    at 512 rows, one thread (CPU time), Q8_0: 2048x2048 28 ms in 4 MB slices, 32 ms in 1 MB ones,
    28 ms whole; 8192x2048 114 ms, 123 ms, 135 ms whole. The GEMMs run in `dtype` (default
    PROMPT_DTYPE), the bias is added in fp32."""
    n, k = layer.out_features, layer.in_features
    dtype = dtype or PROMPT_DTYPE
    step = max(16, chunk_bytes // (4 * k))
    y = torch.empty(x.size(0), n)
    xd = x.to(dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        y[:, start:stop] = torch.nn.functional.linear(xd, layer.dequantized(start, stop).to(dtype))
    return y if layer.bias is None else y.add_(layer.bias)


def prompt_product(layer: NativeLinear, x: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 contiguous times the layer's weight on its own kernel, whatever M."""
    y = torch.empty(x.size(0), layer.out_features)
    bias = layer.bias.data_ptr() if layer.bias is not None else None
    if layer._matvec(x, bias, y, x.size(0), torch.get_num_threads()):
        raise MemoryError("the CPU kernel could not allocate its activation buffer")
    return y


class Bf16Linear(NativeLinear):
    DTYPE, NAME = torch.bfloat16, "bf16"  # the 16-bit float the weight is kept in, and its kernels' suffix

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
    def __init__(self, q: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(q.shape, bias)
        # -128 has no positive counterpart for the kernel's sign trick; a quantizer never makes it
        # (ggml's and ours round w / (max|w| / 127)). Clamped only if present: no second copy of q,
        # and found with min() (one pass; an == mask was a second q-sized array and two passes).
        q = q.to(torch.int8).contiguous()
        self.register_buffer("weight", q.clamp(-127, 127) if q.numel() and int(q.min()) == -128 else q, persistent=False)
        self.register_buffer("scale", d.to(torch.float16).contiguous().view(torch.int16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Q8Linear":
        return cls(*quantize_q8(linear.weight), linear.bias)

    def _matvec(self, x, bias, y, m, threads) -> int:
        return self._lib.ct_linear_q8(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(), bias,
                                      y.data_ptr(), m, self.out_features, self.in_features, threads)

    def _dequantize(self, out, threads, rows: slice) -> None:
        self._lib.ct_dequant_q8(self.weight[rows].data_ptr(), self.scale[rows].data_ptr(), out.data_ptr(),
                                out.size(0), self.in_features, threads)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        q = self.weight[ids].float()
        d = self.scale[ids].view(torch.float16).float()
        return (q.unflatten(-1, (-1, BLOCK)) * d[..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", q8 (blocks of 32)"


class Q4Linear(NativeLinear):
    GEMM_ABOVE = 32
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
    LEVELS = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32)

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

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        packed = self.weight[ids].long()
        low, high = (packed & 15).unflatten(-1, (-1, BLOCK // 2)), (packed >> 4).unflatten(-1, (-1, BLOCK // 2))
        levels = self.LEVELS[torch.cat((low, high), dim=-1)]  # (..., K/32, 32)
        return (levels * self.scale[ids].view(torch.float16).float()[..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", iq4_nl (blocks of 32)"


class KQuantLinear(NativeLinear):
    """A K-quant weight as GGUF stores it: each row K / 256 super-blocks of BLOCK_BYTES bytes."""

    TYPE = -1  # kquants.c's CT_Q4_K .. CT_Q3_K
    BLOCK_BYTES = 0

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
    TYPE, BLOCK_BYTES, GEMM_ABOVE = 0, 144, 24  # GEMM_ABOVE: see GEMV_ROWS


class Q5KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES, GEMM_ABOVE = 1, 176, 16


class Q6KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES, GEMM_ABOVE = 2, 210, 24


class Q2KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES, GEMM_ABOVE = 3, 84, 24


class Q3KLinear(KQuantLinear):
    TYPE, BLOCK_BYTES, GEMM_ABOVE = 4, 110, 16


class IQ4XSLinear(KQuantLinear):
    """IQ4_XS: super-blocks of 256 whose 8 sub-blocks have a 6-bit scale and 4-bit indexes into
    a fixed non-uniform grid of 16 levels (not a K-quant, but read by the same loops)."""

    TYPE, BLOCK_BYTES, GEMM_ABOVE = 5, 136, 16


# ---- GGUF tensors as stored -> layers -----------------------------------------------------

_CHUNK_ROWS = 1024  # a split or repack goes this many rows at a time: no full-size temporaries


def _copied(raw: np.ndarray, start: int, fields: list[tuple[int, int, type]], block: int) -> list[np.ndarray]:
    """Rows start.. of `raw` cut into blocks of `block` bytes, each field (offset, size, dtype) of
    every block copied out into its own array (rows, blocks * size / itemsize). The blocks are
    viewed as records with one opaque field per part: numpy then copies each field with one
    memcpy-sized move per block (2.5 GB/s here), where slicing bytes moved them one by one."""
    rows = np.ascontiguousarray(raw[start:start + _CHUNK_ROWS])
    record = np.dtype({"names": [f"f{i}" for i in range(len(fields))], "formats": [f"V{size}" for _, size, _ in fields],
                       "offsets": [at for at, _, _ in fields], "itemsize": block})
    blocks = rows.reshape(-1).view(record)
    return [np.ascontiguousarray(blocks[f"f{i}"]).view(np.uint8).view(dtype).reshape(rows.shape[0], -1)
            for i, (_, _, dtype) in enumerate(fields)]


def _split(raw: np.ndarray, n: int, fields: list[tuple[int, int, type]], block: int, widths: list[int],
           dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """`raw`'s blocks split into one tensor per field, row chunk by row chunk. The copies are
    numpy's, on this thread: a torch copy per chunk wakes the OpenMP team, and on a busy
    machine each wake-up waits for a descheduled thread (SmolLM2's load took 2.6 s, not 0.1 s)."""
    if len(fields) == 1 and fields[0][:2] == (0, block) and raw.flags.writeable and raw.flags.c_contiguous:
        # one field that is the whole block, in an array of our own: the layer takes it as it is
        return [torch.from_numpy(raw.view(fields[0][2]).reshape(n, widths[0])).view(dtypes[0])]
    out = [np.empty((n, width), dtype=np.dtype(f.__name__ if isinstance(f, type) else f))
           for width, (_, _, f) in zip(widths, fields)]
    for start in range(0, n, _CHUNK_ROWS):
        for array, part in zip(out, _copied(raw, start, fields, block)):
            array[start:start + part.shape[0]] = part
    return [torch.from_numpy(a).view(dtype) for a, dtype in zip(out, dtypes)]


def _q8_0(raw, n, k, bias):
    q, d = _split(raw, n, [(2, 32, np.int8), (0, 2, np.float16)], 34, [k, k // BLOCK], [torch.int8, torch.float16])
    return Q8Linear(q, d, bias)


def _q4_0(raw, n, k, bias):  # w = d q - 8 d: Q4_1's form with m = -8 d (exact in fp16)
    packed, d = _split(raw, n, [(2, 16, np.uint8), (0, 2, np.float16)], 18, [k // 2, k // BLOCK],
                       [torch.uint8, torch.float16])
    return Q4Linear(packed, d, -8 * d, bias)


def _iq4_nl(raw, n, k, bias):
    packed, d = _split(raw, n, [(2, 16, np.uint8), (0, 2, np.float16)], 18, [k // 2, k // BLOCK],
                       [torch.uint8, torch.float16])
    return IQ4NLLinear(packed, d, bias)


def _q4_1(raw, n, k, bias):
    packed, d, m = _split(raw, n, [(4, 16, np.uint8), (0, 2, np.float16), (2, 2, np.float16)], 20,
                          [k // 2, k // BLOCK, k // BLOCK], [torch.uint8, torch.float16, torch.float16])
    return Q4Linear(packed, d, m, bias)


def _half(kind):
    def make(raw, n, k, bias):
        (w,) = _split(raw, n, [(0, 2, np.int16)], 2, [k], [torch.int16])
        return kind(w.view(kind.DTYPE), bias)  # the same dtype: kept, not converted
    return make


def _kquant(kind):
    def make(raw, n, k, bias):
        (blocks,) = _split(raw, n, [(0, kind.BLOCK_BYTES, np.uint8)], kind.BLOCK_BYTES,
                           [k // SUPER_BLOCK * kind.BLOCK_BYTES], [torch.uint8])
        return kind(blocks, (n, k), bias)
    return make


# type name -> (values per block, bytes per block, maker): GGUF's block sizes (gguf.GGML_QUANT_SIZES)
_STORED = {"Q8_0": (32, 34, _q8_0), "Q4_0": (32, 18, _q4_0), "Q4_1": (32, 20, _q4_1), "IQ4_NL": (32, 18, _iq4_nl),
           "BF16": (1, 2, _half(Bf16Linear)), "F16": (1, 2, _half(F16Linear)),
           **{name: (SUPER_BLOCK, kind.BLOCK_BYTES, _kquant(kind)) for name, kind in (
               ("Q4_K", Q4KLinear), ("Q5_K", Q5KLinear), ("Q6_K", Q6KLinear), ("Q2_K", Q2KLinear), ("Q3_K", Q3KLinear),
               ("IQ4_XS", IQ4XSLinear))}}


def has_kernel(type_name: str) -> bool:
    """Whether `stored_layer` takes tensors of this GGML type here (the library built)."""
    return type_name in _STORED and native.library() is not None


def stored_layer(type_name: str, raw: np.ndarray, shape: tuple[int, int], bias: torch.Tensor | None) -> nn.Module | None:
    """The layer computing with a GGUF tensor's stored values: raw uint8 (N, bytes per row) in
    GGML type `type_name` ("Q4_K", "F16", ...), shape (N, K). None where no kernel takes it
    (F32, the loader keeps a float linear; a type without a kernel, the loader dequantizes it;
    no compiled library). `raw` may be a read-only view of a memory-mapped file: the layer
    copies out of it, row chunk by row chunk, and keeps no reference to it."""
    if type_name not in _STORED or native.library() is None:
        return None
    values, size, make = _STORED[type_name]
    n, k = shape
    if k % values or raw.shape != (n, k // values * size) or raw.dtype != np.uint8:
        raise ValueError(f"a {type_name} tensor of shape {n}x{k} needs {n}x{k // values * size} bytes, "
                         f"got {'x'.join(map(str, raw.shape))} of {raw.dtype}")
    return make(raw, n, k, bias)
