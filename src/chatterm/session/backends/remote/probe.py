"""What a remote backend learns about its server when it opens: which model, which kind of
server, how big its context window is, whether the model has a chat template, and which of our
sampling settings it honours.

Probes are cheap GETs made once: `/v1/models` (required: it proves the server speaks the API),
llama.cpp's `/props` (context size, chat template), Ollama's `/api/version`. vLLM is known by
`owned_by: "vllm"` in the model list, and reports `max_model_len` there.

Settings: temperature, top_p, max_new_tokens, seed and stop are standard OpenAI fields. top_k,
min_p and repetition_penalty are extensions: vLLM and llama.cpp accept them (llama.cpp spells the
penalty `repeat_penalty` and also has `repeat_last_n` for our repetition_window), Ollama's OpenAI
layer ignores them, and an unknown server is sent vLLM's names until it refuses one (see
RemoteBackend: a refusal drops the field and records why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ....engine.settings import SPECS
from .http import BackendError, ServerAddress, ServerClient

DEFAULT_CONTEXT_WINDOW = 4096  # assumed when the server does not say; the meter marks it an estimate
STANDARD_SETTINGS = ("temperature", "top_p", "max_new_tokens", "seed", "stop")
# Our setting -> the request field each kind of server reads it from.
EXTENSION_FIELDS = {
    "llama.cpp": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty",
                  "repetition_window": "repeat_last_n"},
    "vllm": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty"},
    "ollama": {},
    "openai-compatible": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty"},
}
NOT_HONOURED = {
    "ollama": "Ollama's OpenAI API ignores it",
    "vllm": "vLLM has no such field (its penalty covers the whole text)",
    "openai-compatible": "the OpenAI API has no such field",
}


@dataclass
class ServerFacts:
    address: ServerAddress
    model: str
    kind: str  # "llama.cpp", "vllm", "ollama" or "openai-compatible"
    context_window: int
    window_known: bool  # False: DEFAULT_CONTEXT_WINDOW, a guess
    has_chat_template: bool | None  # None: the server does not say
    can_tokenize: bool  # llama.cpp's /tokenize counts tokens exactly
    fields: dict[str, str] = field(default_factory=dict)  # extension setting -> request field
    unsupported: dict[str, str] = field(default_factory=dict)  # setting -> why it is not honoured


def resolve_api_key(api_key: str | None, api_key_env: str | None) -> str | None:
    """--api-key-env VAR, then OPENAI_API_KEY, then the config's key. A key that an HTTP header
    cannot carry is refused here, in one line that never shows it (httpx would fail on it at the
    first request, with the key in the message or a traceback)."""
    if api_key_env:
        value, source = os.environ.get(api_key_env), api_key_env
        if not value:
            raise BackendError(f"--api-key-env {api_key_env}: that environment variable is not set")
    elif os.environ.get("OPENAI_API_KEY"):
        value, source = os.environ["OPENAI_API_KEY"], "OPENAI_API_KEY"
    else:
        value, source = api_key or "", None
    key = value.strip() or None
    if key is not None and not all(" " <= c <= "~" for c in key):
        where = f"the API key in {source}" if source else "the API key"
        raise BackendError(f"{where} has a character an HTTP header cannot carry (a control character or a "
                           f"non-ASCII letter); check the {'variable' if source else 'key'}")
    return key


def probe(client: ServerClient, model: str | None, context_window: int | None = None) -> ServerFacts:
    listing = client.get_json("/models")
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise BackendError(f"{client.address.api_base}/models did not list models; is this an OpenAI-compatible server?")
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    try:
        entry = _pick_model(entries, model, client.address.root)
    except BackendError as e:  # the list shows model ids, which the server wrote
        raise BackendError(client.scrub(str(e))) from None
    name = entry["id"] if entry else str(model)

    props = client.try_get_json("/props", root=True)
    props = props if isinstance(props, dict) and ("default_generation_settings" in props or "n_ctx" in props) else None
    if props is not None:
        kind = "llama.cpp"
    elif entry and entry.get("owned_by") == "vllm":
        kind = "vllm"
    elif isinstance(client.try_get_json("/api/version", root=True), dict):
        kind = "ollama"
    else:
        kind = "openai-compatible"

    window = context_window or _window(kind, entry, props)
    template = None
    if props is not None:
        template = bool(props.get("chat_template"))
    facts = ServerFacts(
        address=client.address, model=name, kind=kind,
        context_window=window or DEFAULT_CONTEXT_WINDOW, window_known=bool(window),
        has_chat_template=template, can_tokenize=kind == "llama.cpp",
        fields=dict(EXTENSION_FIELDS[kind]),
    )
    for setting in SPECS:
        if setting not in STANDARD_SETTINGS and setting not in facts.fields:
            facts.unsupported[setting] = NOT_HONOURED.get(kind, "the server has no such field")
    return facts


def _pick_model(entries: list[dict], model: str | None, where: str) -> dict | None:
    ids = [e["id"] for e in entries]
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    if model:
        for e in entries:
            if e["id"] == model or e["id"] == f"{model}:latest":  # Ollama tags
                return e
        if not entries:  # a server that lists nothing may still serve the name it is given
            return None
        raise BackendError(f"{where} has no model {model!r}; it serves: {shown}")
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise BackendError(f"{where} lists no models; name one with --remote-model NAME")
    raise BackendError(f"{where} serves {len(ids)} models; pick one with --remote-model NAME: {shown}")


def _window(kind: str, entry: dict | None, props: dict | None) -> int | None:
    candidates = []
    if props is not None:
        settings = props.get("default_generation_settings")
        if isinstance(settings, dict):
            candidates.append(settings.get("n_ctx"))
        candidates.append(props.get("n_ctx"))
    if entry is not None:
        candidates.append(entry.get("max_model_len"))  # vLLM
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
