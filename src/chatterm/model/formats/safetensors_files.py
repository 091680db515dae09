"""Hugging Face safetensors weights, one file or shards named by `model.safetensors.index.json`,
read one tensor at a time: a model loads in about its own size, never all of it twice.

Shard names come from a stranger's index: one that is absolute, climbs out of the folder
(`../`), or leads out of it through a symlink is refused, so an index cannot make chatterm read
weights from elsewhere on the disk. Every file is checked to be a regular file before it is
opened (safetensors' own open would block on a FIFO).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...regular_file import check_regular
from ..errors import CheckpointError

PREFIXES = ("model.",)
_ELEMENT_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}  # Hugging Face's base-model prefix; our family names start below it


class SafetensorsFiles:
    """The tensors of one or more safetensors files in `folder`, names without `model.`."""

    def __init__(self, folder: Path, shards: list[str]) -> None:
        from safetensors import SafetensorError, safe_open

        self._files = []
        self._where: dict[str, tuple[object, str]] = {}  # our name -> (open file, its name there)
        for shard in shards:
            file = _inside(folder, shard)
            try:
                check_regular(file)
                handle = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{file}: missing, corrupt or truncated safetensors file ({e})") from e
            self._files.append(handle)
            for key in handle.keys():
                name = next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)
                self._where[name] = (handle, key)

    def names(self) -> list[str]:
        return list(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        handle, key = self._where[name]
        return tuple(handle.get_slice(key).get_shape())

    def get(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        handle, key = self._where[name]
        try:
            return handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"tensor {key!r}: corrupt or truncated safetensors data ({e})") from e

    def release(self, name: str) -> None:
        pass  # get_tensor gave a copy: nothing of the file is held

    def nbytes(self, name: str) -> int:
        handle, key = self._where[name]
        view = handle.get_slice(key)
        numel = 1
        for d in view.get_shape():
            numel *= int(d)
        return numel * _ELEMENT_SIZES.get(view.get_dtype(), 4)


def _inside(folder: Path, name) -> Path:
    """`folder / name`, refused unless it stays inside the folder."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"{folder}: the weight index names a shard outside the folder ({str(name)[:80]!r})")
    file = folder / name
    try:
        inside = file.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise CheckpointError(f"{folder}: shard {name[:80]!r} leads outside the folder (a symlink)")
    return file
