"""How a conversation becomes the text a model reads.

The default is the plain transcript the default model is trained on:

    <system prompt>
    User: hello
    Assistant: hi there
    User: how are you?
    Assistant:

The prompt ends with the assistant prefix (no trailing space: with GPT-2 style BPE the space
belongs to the next word's token), and a reply ends where the model starts the next user line,
so the user prefix is the default stop string. A checkpoint may carry its own template (metadata
key "chat_template"), and the user may override it.

`ChatTemplate.transcript` and `prompt_text` are the one rendering of it: for the local prompt
(prompt.py tokenizes the same pieces, one a turn), a server's completion route and its token
counts. `chat_messages` lists the messages a prompt holds, for Jinja templates and chat routes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Sequence


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "{text}\n"  # how the system prompt is written (omitted when empty)
    user: str = "User: {text}\n"  # one user turn
    assistant: str = "Assistant: {text}\n"  # one finished assistant turn
    assistant_prefix: str = "Assistant:"  # what the prompt ends with to ask for a reply
    stop: tuple[str, ...] = field(default=("User:",))  # strings that end a reply

    def __post_init__(self) -> None:
        for name in ("system", "user", "assistant", "assistant_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"chat template: {name!r} must be a string, not {type(getattr(self, name)).__name__}")
        for name in ("system", "user", "assistant"):
            if "{text}" not in getattr(self, name):
                raise ValueError(f"chat template: {name!r} must contain '{{text}}'")
        # a string is not a list of stop strings: tuple("User:") would stop at every "U"
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("chat template: 'stop' must be a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(self.stop))

    def render_turn(self, role: str, text: str) -> str:
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r}")
        return getattr(self, role).replace("{text}", text)

    @property
    def reply_ending(self) -> str:
        """What follows the text of a finished assistant turn ("\\n" by default)."""
        return self.assistant.split("{text}", 1)[1]

    def reply_opening(self, text: str) -> str:
        """An assistant turn holding `text`, without its ending: what a continuation extends."""
        rendered = self.render_turn("assistant", text)
        return rendered[: len(rendered) - len(self.reply_ending)]

    def transcript(self, system: str, turns: Iterable) -> list[str]:
        """The conversation as a completion model reads it: one piece a message of `chat_messages`."""
        return [self.render_turn(m["role"], m["content"]) for m in chat_messages(system, turns)]

    def prompt_text(self, system: str, turns: Sequence, *, continuing: bool = False) -> str:
        """The whole prompt as text: the transcript, then the assistant prefix that asks for a
        reply; `continuing`: the last turn is a reply to extend, and the prompt ends inside it."""
        if continuing:
            *turns, last = turns
            return "".join(self.transcript(system, turns)) + self.reply_opening(last.text)
        return "".join(self.transcript(system, turns)) + self.assistant_prefix

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "ChatTemplate":
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"the chat template must be an object of strings (system, user, assistant, "
                             f"assistant_prefix, stop), not a {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


DEFAULT_TEMPLATE = ChatTemplate()


def chat_messages(system: str, turns: Iterable) -> list[dict]:
    """The messages of a prompt as chat templates and the OpenAI chat API take them: the system
    prompt (when there is one), then each turn (anything with a role and a text)."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": turn.role, "content": turn.text} for turn in turns]
