"""A preallocated key/value cache, written in place.

The cache owns one buffer per layer for keys and values, shaped (B, n_head, max_len, head_dim).
Nothing is ever concatenated: a forward pass writes its new keys/values into the buffers and
attends over a view of them. `length` is the number of valid positions; rolling back to any
prefix (prefix reuse, retry, undo) is just lowering it.

Two modes share one interface, `update(layer, input_pos, k, v) -> (keys, values, mask)`:
- dynamic (default, eager): new entries are appended at `length` and attention reads only the
  first `length + T` positions. Reading only the valid prefix is what makes CPU decode fast.
- static (for `torch.compile` with CUDA graphs): entries are written at `input_pos` with
  `index_copy_`, attention reads the whole buffer under a mask built from `input_pos`, so every
  decode step has the same shapes and the graph never recompiles.

The caller (the generator) advances `length` after each forward pass with `commit(T)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    # An nn.Module so the buffers are registered: torch.compile then treats them as static,
    # in-place-mutated state, which CUDA graphs need.
    def __init__(
        self,
        n_layer: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        static: bool = False,
    ) -> None:
        super().__init__()
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len
        self.static = static
        if static:
            # Tell torch.compile the buffers never move, so CUDA graphs can capture the in-place
            # writes instead of falling back to eager for "mutated inputs".
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.length = 0  # valid positions, shared by all layers

    @classmethod
    def for_model(cls, model, *, batch_size: int = 1, max_len: int | None = None, static: bool = False):
        """A cache sized for `model` (a GPT), on its device and in its dtype."""
        cfg = model.config
        param = next(model.parameters())
        return cls(
            cfg.n_layer,
            getattr(cfg, "n_kv_head", cfg.n_head),  # grouped-query attention caches only the kv heads
            cfg.head_dim,
            max_len or cfg.block_size,
            batch_size=batch_size,
            dtype=param.dtype,
            device=param.device,
            static=static,
        )

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def update(  # noqa: D401 - not nn.Module.forward; called by each attention layer

        self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store k, v (B, nh, T, hs) for `layer`; return the keys, values and attention mask to use.

        The mask is None when plain causal attention (or none at all) is right; otherwise a boolean
        (T, S) tensor, True where a query may attend to a key.
        """
        T = k.size(2)
        if self.static:
            self.keys[layer].index_copy_(2, input_pos, k)
            self.values[layer].index_copy_(2, input_pos, v)
            key_pos = torch.arange(self.max_len, device=input_pos.device)
            mask = key_pos.unsqueeze(0) <= input_pos.unsqueeze(1)  # (T, max_len)
            return self.keys[layer], self.values[layer], mask
        start = self.length
        end = start + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        keys = self.keys[layer, :, :, :end]  # (B, nh, end, hs), a view
        values = self.values[layer, :, :, :end]
        if T == 1 or start == 0:
            return keys, values, None  # one query sees everything; or a plain causal block
        # T queries at positions start..end-1 over keys 0..end-1: query i sees keys <= start + i.
        key_pos = torch.arange(end, device=k.device)
        query_pos = torch.arange(start, end, device=k.device)
        return keys, values, key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)

    def commit(self, n_tokens: int) -> None:
        """Advance past `n_tokens` positions written by the last forward pass."""
        self.length += n_tokens

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` positions (entries past it are ignored, not cleared)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0
