"""GGUF files (llama.cpp's format): metadata to config, tensors dequantized at load.

The file is memory-mapped. Its header (metadata and tensor table) is parsed here, because the
`gguf` package's reader builds a numpy view per array element and takes seconds on a 49k-token
vocabulary; the tensors are dequantized with `gguf.quants.dequantize` (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K) into fp32 torch tensors.

Families: `llama` (Llama, Mistral, SmolLM2, TinyLlama), `qwen2` and `gpt2`. llama.cpp reorders the
rows of a `llama` model's query and key weights so that rotary pairs are adjacent; that is undone
here, since our module pairs dimension i with i + head_dim / 2 as Hugging Face does. Qwen2 files
keep the Hugging Face order.

The embedded tokenizer (`tokenizer.ggml.*`) and chat template are returned in the metadata as a
tokenizer spec of type "gguf" and `chat_template_jinja`; the engine builds the tokenizer.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .registry import ARCHITECTURES, build_model

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
# Types gguf.quants can dequantize and that we have checked against llama.cpp's layouts.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_GGUF_FAMILIES = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2"}


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


class GGUFFile:
    """The parsed header of a GGUF file: `metadata` (key -> value) and `tensors` (name ->
    (ggml type name, numpy shape, byte offset, byte length)) over a memory map of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
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
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, dims, type_id, offset in infos:
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown ggml type {type_id}") from None
            block, size = GGML_QUANT_SIZES[qtype]
            shape = tuple(int(d) for d in reversed(dims))  # ggml lists the fastest-varying dim first
            nbytes = int(np.prod(shape, dtype=np.int64)) // block * size
            if base + offset + nbytes > len(self._map):
                raise CheckpointError(f"{path}: truncated GGUF file (tensor {name!r} runs past the end)")
            self.tensors[name] = (qtype.name, shape, base + offset, nbytes)

    def field(self, key: str, default=None):
        return self.metadata.get(key, default)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor dequantized to fp32, in torch's (rows, columns) order."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        type_name, shape, start, nbytes = self.tensors[name]
        raw = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=start)
        if type_name == "F32":
            values = raw.view(np.float32).copy()
        else:
            values = dequantize(_rows(raw, shape), GGMLQuantizationType[type_name])
        del raw  # release the view of the map, so that close() can unmap it
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))

    def close(self) -> None:
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


def _rows(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The raw bytes shaped as gguf.quants expects: (rows, bytes per row)."""
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return raw.reshape(rows, -1)


def read_gguf(path: Path, context: int | None, progress=None, fits=None):
    """(model, config, meta) for a GGUF file; the model is on the CPU in fp32. `fits(config)`
    (memory.check_fits) is called before any tensor is dequantized."""
    gguf = GGUFFile(path)
    try:
        declared = gguf.field("general.architecture")
        if declared not in _GGUF_FAMILIES:
            known = ", ".join(_GGUF_FAMILIES)
            raise CheckpointError(f"{path}: GGUF architecture {declared!r} is not supported (supported: {known})")
        arch = ARCHITECTURES[_GGUF_FAMILIES[declared]]
        unsupported = sorted({t for t, *_ in gguf.tensors.values() if t not in SUPPORTED_TYPES})
        if unsupported:
            raise CheckpointError(
                f"{path}: quantization type {', '.join(unsupported)} is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
        from . import gguf_names

        config = gguf_names.config_from_metadata(gguf, declared, context)
        if fits is not None:
            fits(config)
        sd = gguf_names.state_dict(gguf, declared, config, progress)
        model = build_model(arch, config, sd, path)
        return model, config, gguf_names.metadata(gguf, path)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read this GGUF file ({e})") from e
    finally:
        gguf.close()

