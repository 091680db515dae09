"""The one interface between a conversation and whatever produces replies.

A backend takes the conversation and the live settings and yields engine events; it never
changes the conversation's turns. `ChatSession` appends the assistant turn from the `Finished`
event that ends every reply. The local backend runs a checkpoint in this process; a remote one
(an OpenAI-compatible server, say) implements the same members, and no front end changes.
`open_backend` (backend_factory.py) is the one way front ends get a backend.
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
    # What the front ends show besides replies:
    warnings: list[str]  # one line each, printed once after opening (plain http to another machine)
    supported_settings: dict[str, str | None]  # setting -> why it is ignored; absent or None: honoured
    context_is_estimate: bool  # context_tokens counts characters, not the model's tokens
    inspector_note: str | None  # why the token inspector stays empty (a server without logprobs)
    settings_apply_mid_reply: bool  # a setting changed while a reply streams acts on its next token

    def reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream the assistant's next reply to `conversation` (which ends with a user turn).

        Yields engine events: `TextDelta` (text safe to show), `TokenStep` (one per token, only
        when `inspect` > 0, with that many candidates), `ContextTrimmed` (old turns dropped to
        fit), and always, last, one `Finished` (the whole text, stop_reason, token counts,
        `error` as one line). Read `settings` as the reply goes (changes apply to the next token)
        and stop soon after `cancel` is set, with stop_reason "cancelled". Errors while
        generating end the stream with a `Finished` whose stop_reason is "error".

        Never append to `conversation`: the caller (ChatSession) appends the assistant turn from
        `Finished`. A backend may only update the conversation's bookkeeping for itself
        (`context_start`, cached `ids` on turns); one that keeps token ids reports the finished
        turn's in `Finished.context_ids` / `ids_key`, one that does not leaves them empty.
        """
        ...

    def continue_reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream more of the last turn of `conversation` (an assistant reply, cut short or
        edited), as `reply` does; `Finished.text` is only the new text (the caller appends it to
        the turn) and `context_ids`, when kept, stand for the whole turn. Raises ValueError (one
        line) before streaming when this backend cannot continue a reply."""
        ...

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        """How many tokens of the window the next prompt would use (an estimate is fine)."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is (an estimate is fine; never waits on a server)."""
        ...
