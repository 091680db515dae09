"""One reply from a remote server (see backend.py for the modes and the contract).

`RemoteReply.events()` sends the request, streams the answer as engine events, and deals with
what can go wrong before the first byte of text: a prompt too long (drop the oldest turns, retry
once), 429/5xx with Retry-After (wait once, cancellably), a refused field or a missing chat
template (the backend learns, the request is retried). Whatever else happens ends the reply with
one `Finished` whose stop_reason is "error" and whose `error` is one line; text already shown is
kept. Cancel is checked every POLL_S seconds, whether or not the server is sending, and so is the
request's overall deadline (server_limits.reply_deadline_s): a server that drips its reply a byte
at a time is stopped there. Tokens are counted here too, so a server that ignores max_tokens is
stopped at it rather than trusted.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, Protocol

from ....engine.events import ContextTrimmed, Event, Finished, TextDelta, ThinkingDelta, TokenStep
from ....engine.settings import SamplingSettings
from ....engine.stop import StopStringMatcher
from ...chats.conversation import Conversation
from ...prompts.prompt import PromptBuilder
from ...prompts.prompt_fit import drop_oldest
from ...prompts.token_estimate import TokenCounter, estimate_tokens
from .api_key_scrub import StreamScrubber
from .http import ServerClient, StreamItem
from .openai_stream import StreamFormatError, parse_chunk
from .probe import ServerFacts
from .server_limits import MAX_CHARS_PER_TOKEN, reply_deadline_s

POLL_S = 0.02  # how often a silent stream checks for cancel
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is reported, not waited for


class ReplyServer(Protocol):
    """What one reply uses of the backend that started it (RemoteBackend), and all it may
    change there: what the backend learns from a reply goes through its methods."""

    client: ServerClient
    facts: ServerFacts
    prompts: PromptBuilder  # fits the conversation to the window
    counter: TokenCounter  # the server's tokens, or an estimate
    mode: str  # "chat" or "completion": the route the next request takes

    def request(self, conversation: Conversation | None, settings: SamplingSettings, inspect: int,
                raw: str | list[int] | None = None, continuing: bool = False) -> tuple[str, dict]: ...
    def stop_strings(self, settings: SamplingSettings, *, raw: bool = False) -> list[str]: ...
    def too_long(self, status: int, message: str) -> bool: ...  # the prompt was too long (and the window learnt)
    def learn_from_refusal(self, status: int, message: str, body: dict, route_mode: str) -> bool: ...
    def chat_route_worked(self) -> None: ...  # a chat reply came through: chat failures are not about templates
    def undo_fallback(self) -> None: ...  # completion failed too: back to the chat route, its warning gone
    def gives_no_probabilities(self) -> None: ...  # replies come without logprobs: the inspector stays empty


class RemoteReply:
    """One reply's state: retries, text released so far, counts and timings."""

    def __init__(self, server: ReplyServer, conversation: Conversation | None, settings: SamplingSettings,
                 cancel: threading.Event, inspect: int, raw: str | list[int] | None = None,
                 continuing: bool = False) -> None:
        self.server, self.conv, self.cancel, self.inspect = server, conversation, cancel, inspect
        self.settings = settings  # the live settings, read when each request is sent
        self.sent = settings.copy()  # those of the request in flight: a server cannot change them mid-reply
        self.raw = raw  # a plain prompt (complete_stream) instead of a conversation
        self.continuing = continuing  # more of the conversation's last turn (completion mode)
        self.started = time.monotonic()  # reset when the reply starts streaming
        self.first_token_at: float | None = None
        self.shown = ""
        self.new_tokens = 0  # chunks with text, replaced by the server's usage figure when sent
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.steps = 0

    def events(self) -> Iterator[Event]:
        self.started = time.monotonic()
        if self.raw is not None:
            self.prompt_tokens = len(self.raw) if isinstance(self.raw, list) else estimate_tokens(self.raw)
        else:
            try:
                conv = self.conv
                if self.continuing:  # fitted as the prompt that asked for the reply, the reply counted in
                    conv = conv.up_to_last_reply()
                prompt = self.server.prompts.build(conv, self.settings.max_new_tokens + self._so_far())
                self.conv.context_start = conv.context_start
            except ValueError as e:
                yield self.finish("error", str(e))
                return
            self.prompt_tokens = len(prompt.ids)
            if prompt.dropped_turns:
                yield ContextTrimmed(prompt.dropped_turns, self.prompt_tokens)
        retried = {"busy": False, "context": False}
        refusals = 0
        fallback = None  # (status, message) of a chat-route failure that made us try completion
        while True:
            path_mode = self.server.mode if self.raw is None else "completion"
            self.sent = self.settings.copy()
            path, body = self.server.request(self.conv, self.sent, self.inspect, self.raw, self.continuing)
            matcher = StopStringMatcher(self.server.stop_strings(self.sent, raw=self.raw is not None))
            stream = self.server.client.stream(path, body)
            try:
                outcome = yield from self.read(stream, matcher)
            finally:
                stream.close()
            if isinstance(outcome, Finished):
                if path_mode == "chat" and outcome.error is None:
                    self.server.chat_route_worked()
                yield outcome
                return
            status, message, retry_after = outcome.status, outcome.message, outcome.retry_after
            if self.server.too_long(status, message) and not retried["context"]:
                retried["context"] = True
                dropped = drop_oldest_turns(self.conv) if self.conv is not None else 0
                if dropped:
                    yield ContextTrimmed(dropped, self.server.counter.count_cached(self.server.prompts, self.conv))
                    continue
                yield self.finish("error", f"the message is too long for the server's context window ({message})")
                return
            if (status == 429 or status >= 500) and retry_after is not None and not retried["busy"] \
                    and retry_after <= MAX_RETRY_AFTER_S:
                retried["busy"] = True
                if self.cancel.wait(retry_after):
                    yield self.finish("cancelled")
                    return
                continue
            if refusals < 3 and self.server.learn_from_refusal(status, message, body, path_mode):
                refusals += 1
                if fallback is None and self.server.mode != path_mode:
                    fallback = (status, message)
                continue
            if fallback is not None:  # completion failed too: the chat route's error is the one to show
                (status, message), fallback = fallback, None
                self.server.undo_fallback()
            if status == 404 and "model" in message.lower():
                yield self.finish("error", f"the server has no model {self.server.facts.model!r} (404): {message}")
                return
            yield self.finish("error", self.server.client.describe_status(status, message))
            return

    def _so_far(self) -> int:
        """Tokens of the reply being continued (0 for a new reply)."""
        return estimate_tokens(self.conv.turns[-1].text) if self.continuing else 0

    def read(self, stream, matcher: StopStringMatcher):
        """Yield the stream's events; return a Finished, or the StreamItem of an HTTP error."""
        finish_reason = matched_stop = None
        max_tokens = self.sent.max_new_tokens
        limit_s = reply_deadline_s(self.server.client.read_timeout, max_tokens)
        deadline = time.monotonic() + limit_s
        received_tokens = received_chars = 0  # our own count of this request's reply, not the server's word
        keys = self.server.client.keys.stream()  # a server echoing the API key: never shown, never saved
        while True:
            if self.cancel.is_set():
                return self.finish("cancelled")
            if time.monotonic() > deadline:
                return self.finish("error", f"the server took more than {limit_s:g} s over a reply of at most "
                                            f"{max_tokens} tokens; chatterm stopped waiting (the text so far is kept)")
            item: StreamItem | None = stream.get(POLL_S)
            if item is None:
                continue
            if item.kind == "status":
                if self.shown:  # cannot happen over HTTP; never retry over shown text
                    return self.finish("error", self.server.client.describe_status(item.status, item.message))
                return item
            if item.kind == "fail":
                return self.finish("error", item.message)
            if item.kind == "end":
                if finish_reason is None and item.data != "done":
                    return self.finish("error", "the server's stream ended before the reply was finished")
                # the server ended here: a held-back tail was no stop after all
                yield from self.show(keys, matcher.flush(), final=True)
                if finish_reason == "length":
                    return self.finish("length")
                # "stop" from the server is a stop string or end of text; only vLLM says which.
                return self.finish("stop" if matched_stop or self.server.mode == "completion" else "eos")
            try:
                chunk = parse_chunk(item.data)
            except StreamFormatError as e:
                return self.finish("error", f"malformed reply from the server: {e}")
            if chunk.error:
                return self.finish("error", f"the server failed mid-reply: {self.server.client.scrub(chunk.error)}")
            if chunk.prompt_tokens is not None:
                self.prompt_tokens = chunk.prompt_tokens
                self.cached_tokens = chunk.cached_tokens or 0
            if chunk.completion_tokens is not None:
                self.new_tokens = chunk.completion_tokens
            if chunk.text:
                received_tokens += max(1, len(chunk.tokens))
                room = max_tokens * MAX_CHARS_PER_TOKEN - received_chars
                received_chars += len(chunk.text)
                if received_tokens > max_tokens:  # a token past the limit: none of this chunk is shown
                    return (yield from self.past_max_tokens(keys, matcher, "", max_tokens))
                if room < len(chunk.text):  # within the count, but longer than any max_tokens tokens can be
                    return (yield from self.past_max_tokens(keys, matcher, chunk.text[:room], max_tokens))
            if self.inspect and chunk.text and not chunk.tokens and self.steps == 0:
                self.server.gives_no_probabilities()
            for token in chunk.tokens:
                yield TokenStep(self.steps, token.token_id, token.text, token.prob, token.candidates)
                self.steps += 1
            if chunk.reasoning:  # apart from the text: no stop strings in it (the server's own apply)
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if chunk.completion_tokens is None:
                    self.new_tokens += max(1, len(chunk.tokens))
                yield ThinkingDelta(chunk.reasoning)
            if chunk.text:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if chunk.completion_tokens is None:
                    self.new_tokens += max(1, len(chunk.tokens))
                safe, stopped = matcher.feed(chunk.text)
                yield from self.show(keys, safe, final=stopped)
                if stopped:
                    return self.finish("stop")
            finish_reason = chunk.finish_reason or finish_reason
            matched_stop = chunk.matched_stop or matched_stop

    def show(self, keys: StreamScrubber, text: str, *, final: bool = False):
        """Release text that passed the stop strings, without the API key; `final`: the reply
        ends here, so the key scrubber's held-back tail goes too."""
        text = keys.feed(text) + (keys.flush() if final else "")
        if text:
            self.shown += text
            yield TextDelta(text)

    def past_max_tokens(self, keys: StreamScrubber, matcher: StopStringMatcher, allowed: str, max_tokens: int):
        """The server sent more than max_tokens: keep what fits (`allowed`: the part of a long
        chunk within the character cap), then end with one line."""
        safe, stopped = matcher.feed(allowed) if allowed else ("", False)
        yield from self.show(keys, safe + ("" if stopped else matcher.flush()), final=True)
        if stopped:
            return self.finish("stop")
        return self.finish("error", f"the server sent more than the {max_tokens} tokens asked for (max_tokens); "
                                    "chatterm stopped the reply there")

    def finish(self, reason: str, error: str | None = None) -> Finished:
        now = time.monotonic()
        ttft = (self.first_token_at or now) - self.started
        return Finished(
            text=self.shown, stop_reason=reason, prompt_tokens=self.prompt_tokens,
            prefill_tokens=max(0, self.prompt_tokens - self.cached_tokens), new_tokens=self.new_tokens,
            ttft_s=ttft, elapsed_s=now - self.started, token_ids=(),
            error=" ".join(error.split()) if error else None,
        )


def drop_oldest_turns(conversation: Conversation) -> int:
    """Drop about half the turns in context (never the latest message; the context opens on a
    user turn): the server said the prompt is too long, not by how much. Returns how many were
    dropped."""
    turns, start = conversation.turns, conversation.context_start
    over = max(1, (len(turns) - 1 - start) // 2)  # counted in turns, each one worth one
    conversation.context_start = drop_oldest(turns, start, over, lambda i: 1, keep=len(turns) - 1)
    return conversation.context_start - start
