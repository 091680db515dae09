"""The one interface between a conversation and whatever produces replies.

A backend takes the conversation and the live settings and yields engine events. The local
backend runs a checkpoint in this process; a remote one (an OpenAI-compatible server, say) only
has to implement the same two members, and no front end changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Protocol

from ..engine.events import Event
from ..engine.settings import SamplingSettings
from .conversation import Conversation


@dataclass(frozen=True)
class BackendInfo:
    name: str  # shown in the status bar
    device: str  # "cpu", "cuda", ...
    dtype: str  # "fp32", "bf16", ...
    context_window: int  # tokens
    parameters: int = 0
    source: str = ""  # the checkpoint path or server address


class ChatBackend(Protocol):
    info: BackendInfo

    def reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream the assistant's next reply to `conversation` (which must end with a user turn).
        The conversation itself is not changed except for bookkeeping (token ids, context_start)."""
        ...

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        """How many tokens of the window the next prompt would use."""
        ...
