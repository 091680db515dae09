"""Train a GPT on prepared token ids (see data.py): AdamW, warm-up + cosine decay, gradient
clipping, periodic validation, bf16 autocast and torch.compile on CUDA, atomic resumable
checkpoints in chatterm's format.

The output folder holds the best model so far (by validation loss) in chatterm's format, ready
to chat with, plus `train_state.pt` (fp32 weights, optimizer, step, RNG) to resume from.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_write, remove_stray_temporaries
from ..model import GPT, GPTConfig, pick_device, save_checkpoint
from ..model.device import DTYPE_NAMES
from ..session.prompts.template import DEFAULT_TEMPLATE
from .config import TrainConfig

STATE_FILE = "train_state.pt"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def batch(ids: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=gen)
    x = torch.stack([ids[s : s + seq_len] for s in starts]).long()
    y = torch.stack([ids[s + 1 : s + seq_len + 1] for s in starts]).long()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: GPT, ids: torch.Tensor, seq_len: int, batches: int, batch_size: int = 8, device="cpu") -> float:
    """Mean cross-entropy over the first `batches * batch_size` non-overlapping windows of `ids`:
    deterministic, so anyone recomputing it gets the same number."""
    was_training = model.training
    model.eval()
    n = min(batches * batch_size, (len(ids) - 1) // seq_len)
    total, count = 0.0, 0
    for b in range(0, n, batch_size):
        starts = range(b * seq_len, min(n, b + batch_size) * seq_len, seq_len)
        x = torch.stack([ids[s : s + seq_len] for s in starts]).long().to(device)
        y = torch.stack([ids[s + 1 : s + seq_len + 1] for s in starts]).long().to(device)
        with _autocast(device):
            logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / max(1, count)


def _autocast(device):
    device = torch.device(device)
    # bf16 autocast pays off on GPUs; on the CPUs we measured it was 3x slower than fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train(cfg: TrainConfig, log=print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    data = Path(cfg.data)
    train_ids = torch.load(data / "train.pt", weights_only=True)
    val_ids = torch.load(data / "val.pt", weights_only=True)
    tokenizer_spec = json.loads((data / "tokenizer.json").read_text())
    vocab = len(tokenizer_spec["ranks"]) + len(tokenizer_spec.get("special_tokens", {}))
    vocab_padded = (vocab + 63) // 64 * 64  # friendlier matmul shapes; padding ids are never sampled
    mconf = GPTConfig(block_size=cfg.block_size, vocab_size=vocab_padded, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    model = GPT(mconf).init_weights(cfg.seed).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    state = {"step": 0, "best_val": float("inf"), "tokens_seen": 0, "history": []}
    if (out / STATE_FILE).exists():
        saved = torch.load(out / STATE_FILE, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["rng"])
        state = saved["progress"]
        log(f"resumed from {out / STATE_FILE} at step {state['step']}")
    step_fn = torch.compile(model) if device.type == "cuda" else model
    model.train()
    tokens_per_step = cfg.batch_size * cfg.block_size
    t_start = time.time()
    t_log, last_loss = time.time(), float("nan")
    while state["step"] < cfg.max_steps:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = batch(train_ids, cfg.batch_size, cfg.block_size, gen, device)
        with _autocast(device):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] = step + 1
        state["tokens_seen"] += tokens_per_step
        last_loss = loss.item()
        if state["step"] % cfg.log_every == 0:
            now = time.time()
            rate = cfg.log_every * tokens_per_step / (now - t_log)
            t_log = now
            log(f"step {state['step']:>6}/{cfg.max_steps}  loss {last_loss:.4f}  lr {lr_at(step, cfg):.2e}  "
                f"{rate:,.0f} tok/s  {state['tokens_seen'] / 1e6:.1f}M tokens  {(now - t_start) / 60:.1f} min")
        out_of_time = cfg.time_limit_min and (time.time() - t_start) / 60 >= cfg.time_limit_min
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps or out_of_time:
            val = evaluate(model, val_ids, cfg.block_size, cfg.eval_batches, device=device)
            state["history"].append({"step": state["step"], "train_loss": last_loss, "val_loss": val,
                                     "tokens_seen": state["tokens_seen"]})
            improved = val < state["best_val"]
            log(f"eval step {state['step']}: val loss {val:.4f}" + ("  (best; saved)" if improved else ""))
            if improved:
                state["best_val"] = val
                _save_model(model, cfg, tokenizer_spec, state, vocab)
            _save_state(out, model, opt, gen, state)
        if out_of_time:
            log(f"time limit of {cfg.time_limit_min} min reached at step {state['step']}")
            break
    return state


def _save_model(model: GPT, cfg: TrainConfig, tokenizer_spec: dict, state: dict, vocab: int) -> None:
    dtype = getattr(torch, DTYPE_NAMES[cfg.save_dtype.strip().lower()])  # the one name map (model/device.py)
    export = GPT(model.config)
    export.load_state_dict({k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()})
    export.to(dtype)
    last = state["history"][-1]
    meta = {
        "name": cfg.name,
        "tokenizer": tokenizer_spec,
        "chat_template": DEFAULT_TEMPLATE.to_dict(),
        "training": {
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
            "step": state["step"],
            "tokens_seen": state["tokens_seen"],
            "train_loss": last["train_loss"],
            "val_loss": last["val_loss"],
            "val_eval": {"seq_len": cfg.block_size, "batches": cfg.eval_batches, "batch_size": 8},
            "parameters": model.num_params(),
            "tokenizer_vocab": vocab,
            **cfg.extra,
        },
    }
    save_checkpoint(cfg.out, export, meta)


def _save_state(out: Path, model: GPT, opt, gen: torch.Generator, state: dict) -> None:
    snapshot = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state(), "progress": state}
    remove_stray_temporaries(out / STATE_FILE)  # a run killed while saving left one (model + optimizer)
    atomic_write(out / STATE_FILE, lambda tmp: torch.save(snapshot, tmp))


if __name__ == "__main__":  # pragma: no cover - `chatterm train` is the entry point
    sys.exit("use: chatterm train --help")
