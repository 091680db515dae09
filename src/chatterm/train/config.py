"""What a training run is told: one dataclass, also the source of `chatterm train`'s flags.

Kept apart from the trainer so that building the command line (every `chatterm` launch) never
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    data: str  # folder with train.pt, val.pt, tokenizer.json
    out: str  # checkpoint folder to write
    name: str = "chatterm-model"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 512  # context window, and the training sequence length
    dropout: float = 0.0
    batch_size: int = 8
    max_steps: int = 2000
    lr: float = 1.5e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"
    save_dtype: str = "bf16"  # dtype of the shipped weights (training is fp32 or bf16 autocast)
    time_limit_min: float = 0.0  # stop (after saving) when this much wall time has passed; 0 = none
    threads: int = 0  # torch CPU threads; 0 = torch's default
    extra: dict = field(default_factory=dict)  # free-form notes for the model card
