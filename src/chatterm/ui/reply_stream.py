"""Routes one streaming reply into the chat, the token inspector and the status bar.

`ReplyStream.start(events)` runs the session's event generator in a thread worker. The worker
batches events and posts `ReplyProgress` (at most one every 40-250 ms) and one `ReplyFinished`
to the app, which hands them back here; this is the only code that turns reply events into
widget updates. Streamed text is appended, never re-rendered whole.
"""

from __future__ import annotations

import time
from typing import Iterable

from ..engine.events import ContextTrimmed, Finished, TextDelta, TokenStep
from ..model.errors import first_line
from ..session.chat import MessageNotSent
from .chat_view import AssistantMessage, ChatView
from .inspector import TokenInspector
from .messages import ReplyFinished, ReplyProgress
from .status_bar import StatusBar

INSPECT_TOP = 8  # candidates per token shown by the inspector
FLUSH_SECONDS = 0.04  # the most often a streaming reply updates the screen (25 times a second)
MAX_FLUSH_SECONDS = 0.25  # and the least often
# The engine shares this process (its GIL and its cores) with the UI, so every redraw is time the
# engine does not get. While a reply streams, updates are spaced so that the UI thread uses at
# most this share of the time (its CPU time over wall time); see BENCHMARKS.md.
UI_TIME_SHARE = 0.1


class ReplyStream:
    def __init__(self, app, chat: ChatView, inspector: TokenInspector, status: StatusBar) -> None:
        self.app = app
        self.chat = chat
        self.inspector = inspector
        self.status = status
        self.active = False  # a reply is streaming
        self._widget: AssistantMessage | None = None
        self._text_before = ""  # what the reply held before a continuation
        self._flush_seconds = FLUSH_SECONDS  # adapted to the UI's share of the time; read by the worker
        self._ui_clock = (0.0, 0.0)  # (wall, UI thread CPU) at the last streaming update
        self._rate_clock: tuple[float, int] | None = None  # (time, tokens) at the first update with tokens
        self._tokens = 0  # tokens of the reply so far

    def start(self, events: Iterable, into: AssistantMessage | None = None) -> None:
        """Stream `events` into a new reply, or `into` an existing one (a continuation)."""
        self.active = True
        self.status.busy = "generating (Esc stops)"
        if not self.status.note.startswith("dropped"):
            self.status.note = ""
        self.status.speed = ""
        self.inspector.reset()
        self._rate_clock, self._tokens = None, 0
        self._widget = into or AssistantMessage()
        self._text_before = into.text if into is not None else ""
        if into is None:
            self.chat.mount(self._widget)
        else:
            into.set_note("")
        self.app.run_worker(lambda: self._relay(events), thread=True, exclusive=True, group="generate")

    def abandon(self) -> None:
        """Forget the current reply (its worker has ended): late updates from it are dropped."""
        self.active = False
        self.status.busy = ""
        self._widget = None

    def _relay(self, events: Iterable) -> None:
        """The worker: consume the events, post batches to the app."""
        text: list[str] = []
        steps: list[TokenStep] = []
        deltas = 0  # TextDelta events: a token count for backends that send no TokenStep
        trimmed = None
        done, error, withdrawn = None, "", False
        last = time.monotonic()
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    deltas += 1
                elif isinstance(event, TokenStep):
                    steps.append(event)
                elif isinstance(event, ContextTrimmed):
                    trimmed = event
                elif isinstance(event, Finished):
                    done = event
                now = time.monotonic()
                if now - last >= self._flush_seconds and (text or steps):
                    self.app.post_message(ReplyProgress("".join(text), steps, trimmed, len(steps) or deltas))
                    text, steps, trimmed, last, deltas = [], [], None, now, 0
        except Exception as e:  # keep the app alive whatever happens in the engine
            error, withdrawn = first_line(e), isinstance(e, MessageNotSent)
        if text or steps or trimmed:
            self.app.post_message(ReplyProgress("".join(text), steps, trimmed, len(steps) or deltas))
        self.app.post_message(ReplyFinished(done, error, withdrawn))

    async def progress(self, message: ReplyProgress) -> None:
        if not self.active:
            return
        self._pace_updates()
        if message.text and self._widget is not None:
            await self._widget.append_text(message.text)
        if message.steps:
            self.inspector.add_steps(message.steps)
        self._show_live_speed(message.tokens)
        if message.trimmed and message.trimmed.dropped_turns:
            dropped = message.trimmed.dropped_turns
            self.app.status_note(f"dropped {dropped} old turns",
                                 f"dropped {dropped} old turns to fit the model's window (marked out of context)")

    def _show_live_speed(self, tokens: int) -> None:
        """Tokens per second since the first update, shown while the reply streams."""
        now = time.perf_counter()
        self._tokens += tokens
        if self._rate_clock is None:
            if tokens:
                self._rate_clock = (now, self._tokens)
            return
        since, at_first = self._rate_clock
        if now - since > 0.2:
            self.status.speed = f"{(self._tokens - at_first) / (now - since):.1f} tok/s"

    def _pace_updates(self) -> None:
        """Stretch or shrink the update interval by the UI thread's share of the time since the
        last update, so that it converges on UI_TIME_SHARE."""
        wall, cpu = time.perf_counter(), time.thread_time()
        last_wall, last_cpu = self._ui_clock
        self._ui_clock = (wall, cpu)
        if last_wall and wall - last_wall < 1.0:  # within one reply's stream
            share = (cpu - last_cpu) / max(wall - last_wall, 1e-3)
            wanted = self._flush_seconds * share / UI_TIME_SHARE
            self._flush_seconds = min(MAX_FLUSH_SECONDS, max(FLUSH_SECONDS, wanted))

    async def finished(self, message: ReplyFinished, note: str) -> None:
        """The reply ended; `note` is what the session recorded on the turn ("stopped", ...)."""
        if not self.active:
            return
        self.active = False
        self.status.busy = ""
        done = message.done
        widget, self._widget = self._widget, None
        if done is None:
            if widget is not None:
                await widget.finish("", f"error: {message.error}")
            # A Rust panic in the tokenizer prints its message and backtrace on the terminal
            # (stderr, which Textual draws on too): paint the whole screen again over it.
            self.app.screen.refresh()
            return
        if widget is not None:
            await widget.finish((self._text_before + done.text).strip(), note or (done.error or ""))
        # A backend without token ids (a server) cannot say which steps a stop string hid.
        shown = len(done.token_ids) if done.token_ids else len(self.inspector.steps)
        backend = self.app.session.backend
        self.inspector.finish(shown, done.stop_reason, note=backend.inspector_note if backend else None)
        self.status.speed = f"TTFT {done.ttft_s:.2f} s · {done.tokens_per_s:.1f} tok/s"
