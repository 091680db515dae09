"""GPT model shapes: one dataclass and one table of named shapes.

The config holds only what decides the shape of the weights and the computation; anything about
tokenization or chat formatting lives in the checkpoint metadata, not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # context window: the number of learned positions
    vocab_size: int = 50257  # rows of the embedding; may be padded past the tokenizer's size
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm
    dropout: float = 0.0  # only used while training
    tie_embeddings: bool = True  # output projection shares the token embedding (GPT-2 does)

    def __post_init__(self) -> None:
        # Configs come from strangers' files: check every type (True is an int to Python, "1e-5"
        # is not a float), so a bad value is one clear line here, not a crash deep in torch.
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r:.40}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model config: {name} must be true or false, got {getattr(self, name)!r:.40}")
        for name, low, high in (("layer_norm_eps", 0.0, 1.0), ("dropout", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
                raise ValueError(f"model config: {name} must be a number from {low:g} to below {high:g}, got {value!r:.40}")
        if self.layer_norm_eps == 0:
            raise ValueError("model config: layer_norm_eps must be above 0")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        """Build from a dict, ignoring keys that are not config fields (e.g. nanoGPT extras)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def num_params(self, include_position: bool = True) -> int:
        """Parameter count with tied input/output embeddings."""
        d, L = self.n_embd, self.n_layer
        # attention 4d^2 + MLP 8d^2 weights; 9d of biases; two LayerNorms (weight, bias)
        per_block = 12 * d * d + (9 * d if self.bias else 0) + (4 * d if self.bias else 2 * d)
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        total = embeddings + L * per_block + (2 * d if self.bias else d)
        if include_position:
            total += self.block_size * d
        return total


# Named shapes. The GPT-2 family matches OpenAI's released models; the small ones are for tests,
# benchmarks and models trained on a laptop.
SHAPES: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    "tiny": GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=2, n_embd=32),
    "small": GPTConfig(block_size=512, vocab_size=4096, n_layer=4, n_head=4, n_embd=256),
    "base": GPTConfig(block_size=1024, vocab_size=8192, n_layer=8, n_head=8, n_embd=512),
}


def shape(name: str) -> GPTConfig:
    """Look up a named shape, with a clear error listing the known names."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}") from None
