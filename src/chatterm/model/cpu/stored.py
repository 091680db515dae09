"""GGUF tensors as stored, turned into the layers that compute with them (native_linear.py):
`stored_layer(type, raw, shape, bias)` splits each block into the planes a layer holds (Q8_0's
scale and values, Q4_0/Q4_1's scale, offset and nibbles; Q5_0's and Q5_1's values widened to Q8_0's
bytes, exactly) or takes the super-blocks as they are (the K-quants, IQ4_XS), never requantizing;
`has_kernel(type)` says which types it takes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import native
from .native_linear import BLOCK, Bf16Linear, F16Linear, IQ4NLLinear, IQ4XSLinear, Q2KLinear, Q3KLinear, Q4KLinear, Q4Linear, Q5KLinear, Q6KLinear, Q8Linear, SUPER_BLOCK

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


def _q5_0(raw, n, k, bias):
    """w = d (q - 16), q of 5 bits: exactly Q8_0's form (an int8 in -16..15 and the same scale).
    Why not its own kernel: llama.cpp's quantizer falls back to Q5_0 (Q4_K) and Q5_1 (Q5_K) where
    a row is not a whole number of 256-value super-blocks (Gemma 3 270M's 640-wide, Qwen2.5
    0.5B's 896-wide, SmolLM2's 576-wide layers); read as Q8_0 they cost 34 bytes a block, not 22,
    where bf16 cost 64."""
    d, qh, qs = _split(raw, n, [(0, 2, np.float16), (2, 4, np.uint8), (6, 16, np.uint8)], 22,
                       [k // BLOCK, k // BLOCK * 4, k // 2], [torch.float16, torch.uint8, torch.uint8])
    return Q8Linear(torch.from_numpy(_five_bits(qh.numpy(), qs.numpy(), n, k, -16)), d, bias)


def _q5_1(raw, n, k, bias):
    """w = d q + m, q of 5 bits (0..31): Q8_0's form with an offset per block (36 bytes a block
    held, not 24; bf16 cost 64). See _q5_0."""
    d, m, qh, qs = _split(raw, n, [(0, 2, np.float16), (2, 2, np.float16), (4, 4, np.uint8), (8, 16, np.uint8)], 24,
                          [k // BLOCK, k // BLOCK, k // BLOCK * 4, k // 2],
                          [torch.float16, torch.float16, torch.uint8, torch.uint8])
    return Q8Linear(torch.from_numpy(_five_bits(qh.numpy(), qs.numpy(), n, k, 0)), d, bias, m)


def _five_bits(qh: np.ndarray, qs: np.ndarray, n: int, k: int, shift: int) -> np.ndarray:
    """Q5_0's and Q5_1's 5-bit values (low nibbles in qs, fifth bits in qh) plus `shift`, as int8 (n, k)."""
    nb = k // BLOCK
    q = np.empty((n, k), dtype=np.int8)
    for start in range(0, n, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, n - start)
        low = qs[start:start + rows].reshape(rows, nb, 16)
        values = np.concatenate((low & 0x0F, low >> 4), axis=-1)  # (rows, nb, 32): j, then j + 16
        # bit j of the block's little-endian 32-bit qh is value j's fifth bit
        high = np.unpackbits(qh[start:start + rows].reshape(rows, nb, 4), axis=-1, bitorder="little")
        q[start:start + rows] = ((values | (high << 4)).astype(np.int16) + shift).astype(np.int8).reshape(rows, k)
    return q


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
           "Q5_0": (32, 22, _q5_0), "Q5_1": (32, 24, _q5_1),
           "BF16": (1, 2, _half(Bf16Linear)), "F16": (1, 2, _half(F16Linear)),
           **{name: (SUPER_BLOCK, kind.BLOCK_BYTES, _kquant(kind)) for name, kind in (
               ("Q4_K", Q4KLinear), ("Q5_K", Q5KLinear), ("Q6_K", Q6KLinear), ("Q2_K", Q2KLinear), ("Q3_K", Q3KLinear),
               ("IQ4_XS", IQ4XSLinear))}}


def has_kernel(type_name: str) -> bool:
    """Whether `stored_layer` takes tensors of this GGML type here (the library built)."""
    return type_name in _STORED and native.library() is not None


def stored_layer(type_name: str, raw: np.ndarray, shape: tuple[int, int],
                 bias: torch.Tensor | None) -> nn.Module | None:
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
