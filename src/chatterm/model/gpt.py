"""The GPT-2 architecture as a torch module.

Learned absolute positions, pre-LayerNorm blocks, GELU (tanh approximation), tied input/output
embeddings, optional biases, attention through `scaled_dot_product_attention`.

`forward(idx, input_pos, cache)` takes positions explicitly. Without a cache it is the plain
causal model (training, uncached decoding). With a `KVCache` it writes the new keys/values into
the cache at `input_pos` and attends over everything cached before them, so a step can feed any
number of new tokens after any cached prefix (prefill, decode, prefix reuse). `input_pos` is the
only record of where tokens go: the cache keeps its own bookkeeping from it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .kv_cache import KVCache
from .native_attention import attend_one
from .native_blocks import gpt2_decode_step


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v, mask = cache.update(self.layer_idx, input_pos, k, v)  # (B, nh, S, hs)
            if T == 1 and mask is None and (y := attend_one(q, k, v)) is not None:  # a decode step
                return self.c_proj(y)
            causal = mask is None and T > 1
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp16 cache under fp32 activations (a no-op otherwise)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        y = self.c_proj(y)
        return F.dropout(y, dropout, self.training) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return F.dropout(x, self.dropout, self.training) if self.training else x


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def init_weights(self, seed: int | None = None) -> "GPT":
        """GPT-2 initialisation (normal 0.02, residual projections scaled by 1/sqrt(2 * n_layer))."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
                continue
            std = 0.02
            if name.endswith("c_proj.weight"):
                std = 0.02 / (2 * self.config.n_layer) ** 0.5
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        last_logits_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T) at positions `input_pos` (T,).

        `input_pos` is required with a cache (where the new keys/values go); without one it
        defaults to 0..T-1. With `last_logits_only` only the final position's logits are
        computed, (B, 1, vocab): prefill needs nothing else, and the vocabulary projection of a
        long prompt is by far its most expensive matmul.
        """
        B, T = idx.shape
        if input_pos is None:
            if cache is not None:
                raise ValueError("a forward pass with a KV cache needs input_pos (where the tokens go)")
            input_pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(input_pos)  # (B, T, C)
        fused = gpt2_decode_step(self, x, input_pos, cache) if cache is not None and T == 1 else None
        if fused is not None:  # a decode step: every block in one call on the CPU kernels
            x = fused
        else:
            for block in self.transformer.h:
                x = block(x, input_pos, cache)
        if last_logits_only:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T or 1, vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once
