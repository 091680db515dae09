"""GGUF files (llama.cpp's format): the header parsed, each tensor yielded as it is stored.

The file is memory-mapped. Its header (metadata and tensor table) is parsed here, because the
`gguf` package's reader builds a numpy view per array element and takes seconds on a 49k-token
vocabulary. `stored(name)` gives a tensor's blocks as they are in the file (read with pread into memory of
its own, which the CPU layers take without requantizing); `tensor(name)` dequantizes one tensor
(every type `gguf.quants` reads: the legacy quants, the K-quants, the IQ types, ...), so nothing
ever holds more than one tensor's worth of floats.

`metadata(path)` gives the embedded tokenizer (`tokenizer.ggml.*`) as a tokenizer spec of type
"gguf", the chat template as `chat_template_jinja`, and the sampling values some files carry.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..families import typed

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
# Stored float types handed to the loader as torch tensors: (numpy view dtype, torch dtype).
_TORCH_FLOATS = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
                 "BF16": (np.uint16, torch.bfloat16)}
_SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "penalty_repeat": "repetition_penalty", "penalty_last_n": "repetition_window"}


def readable_types() -> tuple[str, ...]:
    """The ggml types we read: F32, F16 and every type gguf.quants dequantizes."""
    from gguf.quants import _type_traits

    return ("F32", "F16", *(t.name for t in _type_traits))


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


@dataclass(frozen=True)
class TensorInfo:
    type_name: str  # ggml type: F32, F16, Q8_0, Q4_K, ...
    shape: tuple[int, ...]  # torch order: (rows, columns)
    offset: int  # bytes from the start of the file
    nbytes: int


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as a file stores it: ggml type name, logical shape (rows, columns) and its bytes
    as (rows, bytes per row), each row its own blocks. From a GGUF file `raw` is a read-only
    view of the memory map: copy what is kept."""

    type_name: str
    shape: tuple[int, ...]
    raw: np.ndarray  # uint8 (rows, bytes per row)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes


def dequantize(t: StoredTensor) -> torch.Tensor:
    """A stored tensor as a new fp32 tensor (nothing of the map is kept)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    if t.type_name == "F32":
        values = t.raw.view(np.float32).copy()
    elif t.type_name == "F16":
        values = t.raw.view(np.float16).astype(np.float32)
    else:
        values = gguf_dequantize(t.raw, GGMLQuantizationType[t.type_name])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(t.shape))


class GGUFFile:
    """The parsed header of a GGUF file, `metadata` (key -> value) and `tensors` (name ->
    TensorInfo), over a memory map of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # tensors are read from it with pread: see read_into
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse_header()
        except (struct.error, IndexError, OverflowError, MemoryError) as e:
            self.close()
            raise CheckpointError(f"{path}: truncated or corrupt GGUF header ({e})") from None

    def _parse_header(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        path = self.path
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._read("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._read("<Q") for _ in range(self._read("<I"))]
            infos.append((name, dims, self._read("<I"), self._read("<Q")))
        alignment = int(self.metadata.get("general.alignment", 32))
        base = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown ggml type {type_id}") from None
            block, size = GGML_QUANT_SIZES[qtype]
            shape = tuple(int(d) for d in reversed(dims))  # ggml lists the fastest-varying dim first
            if shape and shape[-1] % block:
                raise CheckpointError(f"{path}: tensor {name!r} has rows of {shape[-1]}, not whole {qtype.name} blocks")
            nbytes = int(np.prod(shape, dtype=np.int64)) // block * size
            if base + offset + nbytes > len(self._map):
                raise CheckpointError(f"{path}: truncated GGUF file (tensor {name!r} runs past the end)")
            self.tensors[name] = TensorInfo(qtype.name, shape, base + offset, nbytes)

    def field(self, key: str, default=None):
        return self.metadata.get(key, default)

    def stored(self, name: str) -> StoredTensor:
        """The tensor's blocks, in memory of their own (read, not mapped: see read_into)."""
        info = self.tensors[name]
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        raw = np.empty((rows, info.nbytes // rows), dtype=np.uint8)
        self.read_into(name, raw)
        return StoredTensor(info.type_name, info.shape, raw)

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Copy tensor `name`'s bytes into `out` (C-contiguous, its size) with pread: the kernel
        copies from its page cache at memory speed, where touching a 1 GB memory map page by page
        costs a fault per 4 KB (seconds of a load) and leaves the pages resident beside our copy."""
        info = self.tensors[name]
        view = memoryview(out).cast("B")
        if len(view) != info.nbytes:
            raise ValueError(f"tensor {name!r} has {info.nbytes} bytes, the buffer {len(view)}")
        done = 0
        while done < info.nbytes:
            n = os.preadv(self._file.fileno(), [view[done:]], info.offset + done)
            if n <= 0:
                raise CheckpointError(f"{self.path}: truncated GGUF file (tensor {name!r} ends early)")
            done += n

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor dequantized to fp32, in torch's (rows, columns) order."""
        return dequantize(self.stored(name))

    # -- the tensor-source interface the loader reads (formats/__init__.py) --------------------

    def names(self) -> list[str]:
        return list(self.tensors)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def nbytes(self, name: str) -> int:
        return self.tensors[name].nbytes

    def get(self, name: str) -> StoredTensor | torch.Tensor:
        """Float tensors (F32, F16, BF16) as torch tensors of their own dtype; quantized ones as
        stored blocks. Both in memory of their own."""
        t = self.stored(name)
        if t.type_name in _TORCH_FLOATS:
            return torch.from_numpy(t.raw.view(_TORCH_FLOATS[t.type_name][0])).view(
                _TORCH_FLOATS[t.type_name][1]).reshape(t.shape)
        return t

    def release(self, name: str) -> None:
        pass  # read, never mapped: nothing of the file stays in this process

    def close(self) -> None:
        self._file.close()
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the map goes when it does
            pass

    # -- header parsing ----------------------------------------------------------------------

    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._map, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._read("<Q")
        text = self._map[self._pos : self._pos + n].decode("utf-8", errors="replace")
        self._pos += n
        return text

    def _value(self, kind: int):
        if kind in _SCALARS:
            value = self._read(_SCALARS[kind])
            return bool(value) if kind == 7 else value
        if kind == 8:
            return self._string()
        if kind == 9:
            item, count = self._read("<I"), self._read("<Q")
            if item in _NUMPY:
                dtype = np.dtype(_NUMPY[item])
                values = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos).tolist()
                self._pos += dtype.itemsize * count
                return values
            return [self._value(item) for _ in range(count)]
        raise CheckpointError(f"{self.path}: corrupt GGUF metadata (value type {kind})")

    # -- what comes with the weights -----------------------------------------------------------

    def checkpoint_meta(self) -> dict:
        """Checkpoint metadata: name, the embedded tokenizer as a spec, the chat template, the
        recommended sampling values some files carry."""
        f = self.field
        tokens = f("tokenizer.ggml.tokens")
        meta: dict = {"name": self.path.stem, "architecture": f("general.architecture")}
        if tokens:
            stop = [f(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
            meta["tokenizer"] = {
                "type": "gguf",
                "model": f("tokenizer.ggml.model"),
                "pre": f("tokenizer.ggml.pre", "default"),
                "tokens": tokens,
                "token_types": f("tokenizer.ggml.token_type"),
                "merges": f("tokenizer.ggml.merges"),
                "scores": f("tokenizer.ggml.scores"),
                "bos_id": f("tokenizer.ggml.bos_token_id"),
                "eos_id": f("tokenizer.ggml.eos_token_id"),
                "add_bos_token": typed(self.metadata, "tokenizer.ggml.add_bos_token", bool, False, label="metadata "),
                "add_space_prefix": typed(self.metadata, "tokenizer.ggml.add_space_prefix", bool, True, label="metadata "),
                "stop_ids": [int(i) for i in stop if isinstance(i, int)],
            }
        sampling = {ours: f(f"general.sampling.{theirs}") for theirs, ours in _SAMPLING.items()}
        sampling = {k: v for k, v in sampling.items() if isinstance(v, (int, float))}
        if sampling:  # the recommended values some files carry
            meta["sampling"] = sampling
        if isinstance(f("tokenizer.chat_template"), str):
            meta["chat_template_jinja"] = f("tokenizer.chat_template")
        return meta
