"""The backend for models served over the OpenAI-compatible API (vLLM, llama.cpp's llama-server,
Ollama, `transformers serve`, SGLang). It implements the ChatBackend contract
(session/backends/contract.py): it yields engine events, ends with exactly one `Finished`, and never
appends to the conversation. Each request reads the live settings when it is sent (a server
cannot change them mid-reply); `logits` is a one-line ValueError (a server gives none).

Modes (`mode=` overrides; otherwise chosen when the backend opens):
- "chat": `/v1/chat/completions`; the server applies the model's own template. For
  instruction-tuned models.
- "completion": `/v1/completions` with chatterm's `User:`/`Assistant:` template (session/prompts/template.py) and
  its `User:` stop. For base models.
Auto: llama.cpp reports the model's template in `/props`: chat if it has one, else completion.
Other servers do not say, so chat is tried first; if the chat route fails before any chat reply
has worked, with a message that mentions a template or with a 5xx (`transformers serve` answers a
model without a template with a bare "500 Internal Server Error"), the backend switches to
completion and retries; if completion fails as well, it goes back to chat and reports the chat
route's error.

Stop strings go to the server and are also enforced here with the same holdback as the local
engine (StopStringMatcher), so a partial `User:` never reaches the screen. Cancel is checked
every POLL_S seconds even while the server is silent, and closing the stream shuts its socket.

Refusals are learnt from: an extension field the server rejects (top_k on `transformers serve`,
say) is dropped and listed in `supported_settings` with the reason; a request field the server
cannot honour (logprobs, stream_options) is dropped too. "Prompt too long" drops the oldest turns
and retries once; 429/5xx with Retry-After waits once. Every other fault ends the reply with
stop_reason "error" and a one-line `error`, keeping the partial text.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from typing import Iterator

from ....engine.events import Event
from ....engine.settings import SPECS, SamplingSettings
from ....engine.thinking import split_thinking
from ...chats.conversation import Conversation
from ...prompts.prompt import PromptBuilder
from ...prompts.template import DEFAULT_TEMPLATE, ChatTemplate, chat_messages
from ...prompts.token_estimate import TokenCounter
from ..contract import BackendInfo
from .http import BackendError, ServerAddress, ServerClient
from .probe import ServerFacts, probe, resolve_api_key
from .reply import RemoteReply

__all__ = ["BackendError", "RemoteBackend"]

OPTIONAL_FIELDS = ("logprobs", "top_logprobs", "stream_options", "seed", "chat_template_kwargs")  # dropped if refused
# vLLM/OpenAI: "maximum context length is N tokens"; llama.cpp: "exceeds the available context size".
_TOO_LONG = re.compile(r"context[ _-]?(length|size|window)|maximum context|too long|too many tokens", re.I)
_MAX_CONTEXT = re.compile(r"maximum context length is (\d+)", re.I)


class RemoteBackend:
    def __init__(self, client: ServerClient, facts: ServerFacts, mode: str | None,
                 template: ChatTemplate | None = None) -> None:
        self.client = client
        self.facts = facts
        self.auto_mode = mode is None
        self.mode = mode or ("completion" if facts.has_chat_template is False else "chat")
        self.template = template or DEFAULT_TEMPLATE
        self.warnings: list[str] = []  # one line each, for the front end to print once
        self.inspector_note: str | None = None  # set once the server turns out to give no logprobs
        self.settings_apply_mid_reply = False  # a request's settings are fixed once it is sent (RemoteReply)
        self.tokenizer = None  # the server's own: reached only through /tokenize (TokenCounter)
        self.meta: dict = {}  # no checkpoint metadata over the API; known models' settings come by name
        self._dropped_fields: set[str] = set()  # request fields this server refused
        self.chat_works = False  # a chat reply has succeeded: chat-route failures are not about templates
        self.counter = TokenCounter(client if facts.can_tokenize else None, f"remote:{facts.address.root}/{facts.model}")
        self.prompts = PromptBuilder(self.counter, self.template, facts.context_window)
        shown_name = client.keys.text(_display_name(facts.model))  # shown and saved: no place for the key either
        self.info = BackendInfo(name=shown_name, device=facts.kind, dtype="remote",
                                context_window=facts.context_window, source=facts.address.root)

    @classmethod
    def open(cls, url: str, *, model: str | None = None, api_key: str | None = None,
             api_key_env: str | None = None, mode: str | None = None, timeout: float = 120.0,
             template: ChatTemplate | None = None, context_window: int | None = None,
             **_ignored) -> "RemoteBackend":
        """Connect and probe the server. Raises BackendError (one line, never the key).
        Unknown options (a local backend's device, dtype, ...) are ignored."""
        if mode not in (None, "auto", "chat", "completion"):
            raise BackendError(f"mode {mode!r}: expected chat, completion or auto")
        address = ServerAddress.parse(url)
        client = ServerClient(address, resolve_api_key(api_key, api_key_env), timeout=timeout)
        try:
            facts = probe(client, model, context_window)
        except BackendError:
            client.close()
            raise
        backend = cls(client, facts, None if mode == "auto" else mode, template)
        if warning := address.insecure_warning():
            backend.warnings.append(warning)
        return backend

    def close(self) -> None:
        """Close the HTTP client and its pooled connections (see ChatBackend.close)."""
        self.client.close()

    # -- what the front ends show --------------------------------------------------------------

    @property
    def supported_settings(self) -> dict[str, str | None]:
        """Every sampling setting -> None if the server honours it, else the reason it does not."""
        reasons = {name: self.facts.unsupported.get(name) for name in SPECS}
        reasons["thinking"] = None if self.mode == "chat" and self.facts.kind != "ollama" else (
            "sent as chat_template_kwargs.enable_thinking, which only the chat route of llama.cpp, vLLM "
            "and SGLang reads")
        return reasons

    @property
    def context_is_estimate(self) -> bool:
        """True when context_tokens counts characters rather than the server's tokens."""
        return self.counter.estimated

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        """Tokens the next prompt would use. Never calls the server: turns not yet counted by it
        are estimated (and `context_is_estimate` says so)."""
        return self.counter.count_cached(self.prompts, conversation)

    def count_tokens(self, text: str) -> int:
        return self.counter.count(text, cached_only=True)[0]

    # -- a reply -------------------------------------------------------------------------------

    def reply(self, conversation: Conversation, settings: SamplingSettings, *,
              cancel: threading.Event | None = None, inspect: int = 0) -> Iterator[Event]:
        run = RemoteReply(self, conversation, settings, cancel or threading.Event(), inspect)
        return split_thinking(run.events())  # a server that leaves <think> in the text

    def continue_reply(self, conversation: Conversation, settings: SamplingSettings, *,
                       cancel: threading.Event | None = None, inspect: int = 0) -> Iterator[Event]:
        """More of the last reply: in completion mode the transcript is sent ending with the
        partial reply, which the server extends. The chat route has no standard way to do that."""
        conversation.up_to_last_reply()  # raises when there is no reply to continue
        if self.mode == "chat":
            raise ValueError("this server is in chat mode, which cannot continue a reply; "
                             "start chatterm with --remote-mode completion to continue replies")
        run = RemoteReply(self, conversation, settings, cancel or threading.Event(), inspect, continuing=True)
        return split_thinking(run.events())

    def complete_stream(self, prompt: str | list[int], settings: SamplingSettings, *,
                        cancel: threading.Event | None = None, inspect: int = 0) -> Iterator[Event]:
        """Stream a plain continuation of `prompt` (text, or the server's token ids) from
        `/v1/completions`, without any template: `chatterm generate URL --prompt ...`."""
        run = RemoteReply(self, None, settings, cancel or threading.Event(), inspect, raw=prompt)
        return run.events()

    def logits(self, ids: list[int]):
        """Servers stream sampled tokens (with at most 20 candidates' probabilities), never the
        logits of every position: ValueError."""
        raise ValueError(f"{self.info.source}: a server gives no logits; load the checkpoint itself "
                         "(chatterm.load(PATH)) for them")

    # -- what a reply asks and learns (RemoteReply, through its ReplyServer) -------------------

    def request(self, conversation: Conversation | None, settings: SamplingSettings, inspect: int,
                raw: str | list[int] | None = None, continuing: bool = False) -> tuple[str, dict]:
        """The route and JSON body for the next reply (the prompt must already be fitted), or,
        with `raw`, for a plain completion of that prompt; `continuing`: more of the last turn
        (completion mode only)."""
        mode = "completion" if raw is not None else self.mode
        body: dict = {"model": self.facts.model, "stream": True, "max_tokens": settings.max_new_tokens,
                      "temperature": settings.temperature, "top_p": settings.top_p,
                      "stream_options": {"include_usage": True}}
        stops = self.stop_strings(settings, raw=raw is not None)
        if stops:
            body["stop"] = stops[:4]  # OpenAI's limit; the rest are enforced here
        if settings.seed is not None:
            body["seed"] = settings.seed
        for name, field_name in self.facts.fields.items():
            value = getattr(settings, name)
            if name == "repetition_window" and value == 0:
                value = -1  # llama.cpp: -1 is the whole context, 0 would switch the penalty off
            if name == "top_k" and value == 0 and self.facts.kind == "vllm":
                value = -1  # vLLM's "off", accepted by every version
            body[field_name] = value
        if inspect > 0:
            top = min(inspect, 20)
            if mode == "chat":
                body.update(logprobs=True, top_logprobs=top)
            else:
                body["logprobs"] = top
        if raw is not None:
            body["prompt"] = raw
            path = "/completions"
        elif mode == "chat":
            body["messages"] = chat_messages(conversation.system, conversation.turns[conversation.context_start :])
            if settings.thinking is not None:  # Qwen3's template switch: llama.cpp, vLLM, SGLang
                body["chat_template_kwargs"] = {"enable_thinking": settings.thinking}
            path = "/chat/completions"
        else:  # continuing: the prompt ends in the partial reply, for the server to extend
            in_context = conversation.turns[conversation.context_start :]
            body["prompt"] = self.template.prompt_text(conversation.system, in_context, continuing=continuing)
            path = "/completions"
        for name in self._dropped_fields:
            body.pop(name, None)
        return path, body

    def stop_strings(self, settings: SamplingSettings, *, raw: bool = False) -> list[str]:
        own = list(self.template.stop) if self.mode == "completion" and not raw else []
        return list(dict.fromkeys(own + list(settings.stop)))

    def learn_from_refusal(self, status: int, message: str, body: dict, route_mode: str) -> bool:
        """A 4xx/5xx before any text from a `route_mode` request: adapt so that a retry can
        succeed. True if it did."""
        lowered = message.lower()
        chat_failed = self.auto_mode and route_mode == self.mode == "chat" and not self.chat_works
        if chat_failed and ("template" in lowered or status >= 500):
            self.mode = "completion"  # `transformers serve` says only "500 Internal Server Error"
            self.warnings.append(f"{self.facts.model}: the server's chat route failed ({status}: {message}); "
                                 "using chatterm's User:/Assistant: template (completion mode)")
            return True
        if status >= 500:
            return False
        extension = {f: s for s, f in self.facts.fields.items() if f in body}
        named = [f for f in [*extension, *OPTIONAL_FIELDS] if f in body and re.search(rf"\b{f}\b", message)]
        if not named and extension and re.search(r"unexpected|unknown|unrecognized|extra|not permitted", lowered):
            named = list(extension)  # refused without naming fields: drop every extension
        for f in named:
            if f in extension:
                self.facts.fields.pop(extension[f], None)
                self.facts.unsupported[extension[f]] = f"the server refused it ({message})"
            else:
                self._dropped_fields.add(f)
                if f in ("logprobs", "top_logprobs"):
                    self.gives_no_probabilities()
        return bool(named)

    def chat_route_worked(self) -> None:
        self.chat_works = True

    def undo_fallback(self) -> None:
        """Completion mode failed too after a chat-route failure switched to it: back to chat,
        and the warning that announced the switch goes (the chat route's error is reported)."""
        self.mode = "chat"
        self.warnings.pop()

    def gives_no_probabilities(self) -> None:
        self.inspector_note = "the server gives no token probabilities"

    def too_long(self, status: int, message: str) -> bool:
        if status not in (400, 413, 422) or not _TOO_LONG.search(message):
            return False
        if m := _MAX_CONTEXT.search(message):  # vLLM names its window: fit to it from now on
            self.prompts.window = int(m.group(1))
            self.info = replace(self.info, context_window=int(m.group(1)))
        return True


def _display_name(model_id: str) -> str:
    """The model's name for the status bar: llama.cpp's server names a model by the file path it
    was started with, which would fill the bar; show the file's name. Requests use the full id."""
    if model_id.startswith(("/", "~", "./")) or re.match(r"[A-Za-z]:\\", model_id):
        return re.split(r"[/\\]", model_id.rstrip("/\\"))[-1] or model_id
    return model_id
