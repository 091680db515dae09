"""Read the chunks of an OpenAI-compatible streaming reply: text, token log-probabilities, the end.

Servers agree on the text but not on the rest, so every shape seen in the wild is handled here
and nowhere else:

- chat (`/v1/chat/completions`): `choices[0].delta.content`; log-probabilities in
  `choices[0].logprobs.content[*]` as `{token, logprob, top_logprobs: [{token, logprob}]}`
  (OpenAI, vLLM, llama.cpp; llama.cpp adds the token `id`).
  A thinking model's reasoning comes beside the content, as `delta.reasoning_content` (llama.cpp,
  DeepSeek, older vLLM) or `delta.reasoning` (recent vLLM, Ollama, OpenRouter).
- completion (`/v1/completions`): `choices[0].text`; log-probabilities either in the legacy
  shape `choices[0].logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}]}`
  (OpenAI, vLLM) or in the chat shape above (recent llama.cpp).
- the end: `choices[0].finish_reason` ("stop", "length", ...), vLLM's `stop_reason` (the stop
  string that matched, or null at end of text), `usage` (possibly in a last chunk with no
  choices), and `{"error": ...}` chunks that some servers send mid-stream instead of a status.

Nothing here does I/O; `parse_chunk` turns one decoded JSON chunk into a `Chunk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class StreamFormatError(ValueError):
    """A chunk that is not what an OpenAI-compatible server sends (one line)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as the server reports it."""

    text: str
    prob: float
    token_id: int  # the server's id where it gives one, else negative (see _step)
    candidates: tuple[tuple[int, str, float], ...]  # (id, text, prob), most likely first


@dataclass
class Chunk:
    text: str = ""
    reasoning: str = ""  # a thinking model's reasoning, sent apart from the text
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: str | None = None  # vLLM's `stop_reason` when it is a string
    prompt_tokens: int | None = None  # from `usage`
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # `usage.prompt_tokens_details.cached_tokens`
    error: str | None = None  # an error the server sent inside the stream


def parse_chunk(data: object) -> Chunk:
    """Decode one chunk (already parsed from JSON). Raises StreamFormatError on a foreign shape."""
    if not isinstance(data, dict):
        raise StreamFormatError(f"expected a JSON object, got {type(data).__name__}")
    chunk = Chunk()
    if "error" in data:
        chunk.error = error_text(data["error"]) or "the server reported an error"
        return chunk
    usage = data.get("usage")
    if isinstance(usage, dict):
        chunk.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        chunk.completion_tokens = _int_or_none(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            chunk.cached_tokens = _int_or_none(details.get("cached_tokens"))
    choices = data.get("choices")
    if choices is None and usage is not None:
        return chunk
    if not isinstance(choices, list):
        raise StreamFormatError("a chunk without 'choices'")
    if not choices:  # the usage-only chunk of `stream_options.include_usage`
        return chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise StreamFormatError("'choices[0]' is not an object")
    delta = choice.get("delta") or choice.get("message")  # "message": a reply that was not streamed
    if isinstance(delta, dict):
        text = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        chunk.reasoning = reasoning if isinstance(reasoning, str) else ""
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise StreamFormatError("the reply text is not a string")
    chunk.text = text or ""
    chunk.finish_reason = choice.get("finish_reason") or None
    if isinstance(choice.get("stop_reason"), str):
        chunk.matched_stop = choice["stop_reason"]
    chunk.tokens = parse_logprobs(choice.get("logprobs"))
    return chunk


def parse_logprobs(logprobs: object) -> list[TokenLogprob]:
    """The tokens in a `logprobs` field of either shape; [] when absent or unreadable."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):
        return [t for t in map(_chat_token, logprobs["content"]) if t is not None]
    tokens, chosen, tops = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(chosen, list):
        return []
    tops = tops if isinstance(tops, list) else [None] * len(tokens)
    steps = []
    for text, logprob, top in zip(tokens, chosen, tops):
        if not isinstance(text, str):
            continue
        candidates = []
        if isinstance(top, dict):
            candidates = [(-1, str(t), _prob(lp)) for t, lp in top.items()]
        steps.append(_step(text, _prob(logprob), -1, candidates))
    return steps


def _chat_token(entry: object) -> TokenLogprob | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return None
    token_id = _int_or_none(entry.get("id"))
    candidates = []
    for top in entry.get("top_logprobs") or []:
        if isinstance(top, dict) and isinstance(top.get("token"), str):
            top_id = _int_or_none(top.get("id"))
            candidates.append((-1 if top_id is None else top_id, top["token"], _prob(top.get("logprob"))))
    return _step(entry["token"], _prob(entry.get("logprob")), -1 if token_id is None else token_id, candidates)


def _step(text: str, prob: float, token_id: int, candidates: list) -> TokenLogprob:
    candidates.sort(key=lambda c: -c[2])
    if token_id == -1 or any(c[0] == -1 for c in candidates):
        # No ids from the server: give each candidate its own negative id (the inspector tells the
        # chosen token by id) and the chosen token the id of the candidate with its text.
        candidates = [(-2 - i, t, p) for i, (_, t, p) in enumerate(candidates)]
        token_id = next((c[0] for c in candidates if c[1] == text), -1)
    return TokenLogprob(text=text, prob=prob, token_id=token_id, candidates=tuple(candidates))


def _prob(logprob: object) -> float:
    if isinstance(logprob, (int, float)) and not isinstance(logprob, bool) and math.isfinite(logprob):
        return min(1.0, math.exp(min(logprob, 0.0)))
    return 0.0  # -inf, null or junk: the server gave nothing usable


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_text(error: object) -> str:
    """The message inside an OpenAI-style error body (`{"error": {"message": ...}}`, `{"error":
    "..."}`, FastAPI's `{"detail": ...}`), on one line."""
    if isinstance(error, dict):
        for key in ("error", "message", "detail", "msg"):
            if key in error:
                found = error_text(error[key])
                if found:
                    return found
        return ""
    if isinstance(error, list):  # FastAPI validation errors: a list of {"msg": ...}
        return "; ".join(filter(None, (error_text(e) for e in error[:3])))
    if error is None:
        return ""
    return " ".join(str(error).split())
