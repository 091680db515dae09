"""Tiny real models for tests: built with fixed seeds in well under a second.

`byte_tokenizer_spec` is a byte-level BPE (256 bytes, a few merges, <|endoftext|>), so strings
split over tokens in known ways. `train_parrot` overfits a tiny GPT on a short chat transcript so
that greedy decoding reproduces it: a real model whose replies we can predict, which makes stop
strings, streaming and the UI testable without mocks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from chatterm.engine.tokenizer import Tokenizer
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import GPT, GPTConfig, save_checkpoint
from chatterm.session.prompts.template import DEFAULT_TEMPLATE

MERGES = [b"Us", b"er", b"As", b"si", b"st", b"an", b"nt", b"\xc3\xa9", b"he", b"ll", b"lo"]

PARROT_SCRIPT = (
    "User: hi\nAssistant: hello there, friend\n"
    "User: how are you?\nAssistant: very well, thank you\n"
    "User: what is your name?\nAssistant: my name is parrot\n"
)


def byte_tokenizer_spec(eot: bool = True) -> dict:
    """Without `eot` the model has no end-of-text token, so a random model never stops early."""
    ranks = [bytes([i]) for i in range(256)] + MERGES
    return Tokenizer.bpe_spec(ranks, {"<|endoftext|>": len(ranks)} if eot else {}, name="test-bytes")


def tiny_config(**overrides) -> GPTConfig:
    base = GPTConfig(block_size=256, vocab_size=288, n_layer=2, n_head=2, n_embd=64)
    return replace(base, **overrides)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).init_weights(seed).eval()


def train_parrot(steps: int = 300, seed: int = 0, text: str = PARROT_SCRIPT) -> tuple[GPT, Tokenizer]:
    """A tiny GPT overfitted on `text` (repeated), so greedy decoding recites it."""
    tok = open_tokenizer(byte_tokenizer_spec())
    torch.manual_seed(seed)
    model = GPT(tiny_config()).init_weights(seed)
    ids = torch.tensor(tok.encode(text * 8), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = 96
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (8,), generator=gen)
        x = torch.stack([ids[s : s + T] for s in starts])
        y = torch.stack([ids[s + 1 : s + T + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def save_tiny_checkpoint(folder: Path, model: GPT, tokenizer_spec: dict | None = None, name: str = "tiny",
                         **extra_meta) -> Path:
    meta = {
        "name": name,
        "tokenizer": tokenizer_spec or byte_tokenizer_spec(),
        "chat_template": DEFAULT_TEMPLATE.to_dict(),
        **extra_meta,
    }
    return save_checkpoint(folder, model, meta)


POLL_SECONDS = 0.01  # how often wait_until looks again; short, so a test waits no longer than needed


async def wait_until(pilot, condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Let the app run until `condition()` is true (polled), or fail after `timeout` seconds.
    UI tests wait with this, never with fixed pauses: a pause long enough on a loaded machine
    is wasted time on a fast one, and one too short makes a test flaky."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition.__doc__ or condition}")
        await pilot.pause()  # handle pending messages
        await asyncio.sleep(POLL_SECONDS)  # and give worker threads the GIL between looks


def poll_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """`wait_until` for a test without an app (a subprocess, a file): look at `condition()` every
    POLL_SECONDS until it is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition.__doc__ or condition}")
        time.sleep(POLL_SECONDS)
