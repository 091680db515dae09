"""A preallocated key/value cache, written in place at the positions the caller passes.

The cache owns one buffer per layer for keys and values, shaped (B, n_kv_head, max_len,
head_dim): sized by the number of key/value heads, which grouped-query attention makes smaller
than the number of query heads. Nothing is ever concatenated: a forward pass writes its new
keys/values into the buffers and attends over a view of them.

Positions have one source of truth, the `input_pos` (T,) of the forward pass: entries are
written there, and nothing else says where. There is no commit step for the caller to remember.

Two modes share one interface, `update(layer, input_pos, k, v) -> (keys, values, mask)`:
- dynamic (default, eager): positions must be contiguous. A write at `input_pos` makes the
  valid prefix end after it (`length`, derived from the last write), so writing at an earlier
  position is the rollback (prefix reuse, retry, undo): the entries after it stop counting.
  Attention reads only the first `length` positions, which is what makes CPU decode fast.
- static (for `torch.compile` with CUDA graphs): entries are written with `index_copy_`,
  attention reads the whole buffer under a mask built from `input_pos`, so every decode step has
  the same shapes and the graph never recompiles. No Python state changes during a forward
  (that would recompile), so `length` is not tracked: the positions passed in are the record.
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
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        static: bool = False,
    ) -> None:
        super().__init__()
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.n_layer = n_layer
        self.max_len = max_len
        self.static = static
        if static:
            # Tell torch.compile the buffers never move, so CUDA graphs can capture the in-place
            # writes instead of falling back to eager for "mutated inputs".
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self._length = 0  # dynamic mode: end of the valid prefix, set by the last write
        self._span = (0, 0)  # dynamic mode: (start, end) of the forward pass under way

    @classmethod
    def for_model(cls, model, *, batch_size: int = 1, max_len: int | None = None, static: bool = False):
        """A cache sized for `model`, on its device and in its dtype (or `model.kv_cache_dtype`:
        fp16 where chatterm's CPU kernels run the model). Reads `n_kv_head` from the
        model's config (grouped-query attention), falling back to `n_head`."""
        cfg = model.config
        param = next(model.parameters())
        dtype = getattr(model, "kv_cache_dtype", None) or param.dtype  # set by linear.pack_linears
        return cls(
            cfg.n_layer,
            getattr(cfg, "n_kv_head", None) or cfg.n_head,
            cfg.head_dim,
            max_len or cfg.block_size,
            batch_size=batch_size,
            dtype=dtype,
            device=param.device,
            static=static,
        )

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def length(self) -> int:
        """Valid positions after the last write (dynamic mode; always 0 in static mode)."""
        return self._length

    def update(  # noqa: D401 - not nn.Module.forward; called by each attention layer
        self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store k, v (B, n_kv_head, T, hs) for `layer` at `input_pos` (T,); return the keys,
        values and attention mask to use. Layers are called in order, starting at 0.

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
        start, end = self.reserve(layer, input_pos, T)
        if self.keys.dtype == torch.float16 and k.dtype != torch.float16:  # fp16's range, never inf
            k, v = k.clamp(-65504, 65504), v.clamp(-65504, 65504)
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        keys = self.keys[layer, :, :, :end]  # (B, n_kv_head, end, hs), a view
        values = self.values[layer, :, :, :end]
        if T == 1 or start == 0:
            return keys, values, None  # one query sees everything; or a plain causal block
        # T queries at positions start..end-1 over keys 0..end-1: query i sees keys <= start + i.
        key_pos = torch.arange(end, device=k.device)
        query_pos = torch.arange(start, end, device=k.device)
        return keys, values, key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)

    def reserve(self, layer: int, input_pos: torch.Tensor, T: int) -> tuple[int, int]:
        """The positions (start, end) that `layer` writes this forward pass (dynamic mode), with
        the bookkeeping `update` does; for a caller that writes the buffers itself (the CPU
        decode-step kernel). Layer 0 checks the positions before anything is written."""
        if layer == 0:
            # One host read per forward pass (positions are contiguous); tolist is the cheap one
            # for a single decode position, indexing for a long prefill.
            self._reserve_span(input_pos.tolist()[0] if T == 1 else int(input_pos[0]), T)
        return self._span

    def reserve_position(self, position: int) -> int:
        """`reserve` for one token at `position` given as an int, for every layer at once (the
        CPU decode step called from Python ints); returns where it goes."""
        return self._reserve_span(position, 1)[0]

    def _reserve_span(self, start: int, T: int) -> tuple[int, int]:
        self._span = self._checked_span(start, T)
        self._length = self._span[1]  # everything after this pass's positions is stale from now on
        return self._span

    def _checked_span(self, start: int, T: int) -> tuple[int, int]:
        end = start + T
        if start > self._length:
            raise ValueError(f"KV cache: writing at position {start} would leave positions "
                             f"{self._length}..{start - 1} unwritten")
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        return start, end
