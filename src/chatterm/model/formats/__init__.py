"""Checkpoint formats: each yields named tensors, one at a time, through one small interface.

A tensor source has `names()`, `has(name)`, `shape(name)`, `get(name)` (a torch tensor, or for quantized
GGUF tensors a `gguf.StoredTensor`: the blocks as stored) and `release(name)` (the loader is done
with it: a memory-mapped source lets its pages go), `nbytes(name)` (as stored, for the memory check). `model/loader.py` reads nothing else, so a
format knows nothing of families and a family nothing of files.

- `gguf.py`: llama.cpp's GGUF files (memory-mapped; quantized blocks kept as stored);
- `safetensors_files.py`: Hugging Face folders, sharded or not, read tensor by tensor;
- `state_dicts.py`: the GPT-2 dialects of in-memory state dicts (nanoGPT, the textbook, Hugging
  Face's Conv1D layout), translated to our names and then read through `DictSource`;
- `hf_folder.py`: what comes with a Hugging Face folder (tokenizer, chat template, sampling).
"""

from __future__ import annotations

from typing import Protocol

import torch

# The biggest metadata file that comes with a checkpoint (a config, index, tokenizer config or chat
# template, chatterm.json); a bigger one is not one, and is refused before it is read.
MAX_JSON_BYTES = 64 * 1024 * 1024


class TensorSource(Protocol):
    def names(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str): ...  # torch.Tensor, or gguf.StoredTensor for quantized blocks

    def release(self, name: str) -> None: ...

    def nbytes(self, name: str) -> int: ...  # as stored


class DictSource:
    """An in-memory state dict as a tensor source (the small formats: ours, nanoGPT, plain
    state dicts), read without a copy."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.sd = sd

    def names(self) -> list[str]:
        return list(self.sd)

    def has(self, name: str) -> bool:
        return name in self.sd

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.sd[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.sd[name]

    def nbytes(self, name: str) -> int:
        return self.sd[name].numel() * self.sd[name].element_size()

    def release(self, name: str) -> None:
        self.sd.pop(name, None)  # the final layer holds what it needs
