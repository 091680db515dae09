"""Messages that worker threads post to the app: the only way they talk to the UI."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from ..engine.events import ContextTrimmed, Finished, TokenStep
from ..session.backends.contract import ChatBackend


@dataclass
class ModelLoaded(Message):
    backend: ChatBackend
    seconds: float


@dataclass
class ModelFailed(Message):
    error: str  # one line


@dataclass
class ReplyProgress(Message):
    """What a reply produced since the last update (batched: at most every ~40 ms)."""

    text: str
    steps: list[TokenStep]
    trimmed: ContextTrimmed | None
    tokens: int = 0  # tokens generated in this batch (for the live tok/s)
    thinking: str = ""  # a thinking model's reasoning, shown apart (thinking_block.py)


@dataclass
class ReplyFinished(Message):
    done: Finished | None  # None when the reply could not start
    error: str = ""
    withdrawn: bool = False  # the message was taken back out: its prompt could not be built
