"""The one interface between a conversation and whatever produces replies: `ChatBackend`.

A backend takes the conversation and the live settings and yields engine events; it never
changes the conversation's turns. `ChatSession` appends the assistant turn from the `Finished`
event that ends every reply. The local backend runs a checkpoint in this process; the remote one
talks to an OpenAI-compatible server; both implement every member below, and front ends use
them without probing (`hasattr`/`getattr`): a member a backend cannot do is still there and
answers plainly (None, {}, or a one-line ValueError, as each member says).
`open_backend` (factory.py) is the one way front ends get a backend, and whoever
replaces or drops one calls its `close()`.

Settings: every request reads the live `SamplingSettings` object it is given, never a copy
taken earlier. How often it reads them is `settings_apply_mid_reply`: True (a model in this
process) means at every token, so a change acts on the reply that is streaming; False (a server:
a request's settings are fixed once it is sent) means when each request is sent, so a change
acts from the next reply, or a retry of this one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

from ...engine.events import Event
from ...engine.settings import SamplingSettings
from ..chats.conversation import Conversation

if TYPE_CHECKING:
    import torch

    from ...engine.tokenizer import Tokenizer


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
    settings_apply_mid_reply: bool  # see the module doc: at every token (True) or per request (False)
    # What the Python API and the model's recommended settings read:
    tokenizer: Tokenizer | None  # the model's own tokenizer when it runs in this process; None for a server
    meta: dict  # the checkpoint's metadata (its "sampling" holds recommended settings); {} for a server

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
        `error` as one line). Read `settings` live, as `settings_apply_mid_reply` says (the
        module doc), and stop soon after `cancel` is set, with stop_reason "cancelled". Errors
        while generating end the stream with a `Finished` whose stop_reason is "error".

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
        line) before streaming when the conversation does not end with a reply
        (`Conversation.up_to_last_reply` says so) or this backend cannot continue one."""
        ...

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        """How many tokens of the window the next prompt would use (an estimate is fine)."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is (an estimate is fine; never waits on a server)."""
        ...

    def complete_stream(
        self,
        prompt: str | list[int],
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream a plain continuation of `prompt` (text, or the model's token ids), without any
        chat template: `chatterm generate` and the Python API. The same events as `reply`.
        Raises ValueError (one line) before streaming when the prompt cannot be encoded."""
        ...

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Float32 logits (len(ids), vocab) for every position of `ids`, uncached. Raises
        ValueError (one line) when the backend cannot give them (a server gives none)."""
        ...

    def close(self) -> None:
        """Let go of what the backend holds (a server's connections; a model's weights and cache,
        as far as nothing else holds them). Called once, by whoever replaced or dropped the
        backend, after its last reply has ended; the backend is not used afterwards."""
        ...
