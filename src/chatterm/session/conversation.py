"""A conversation: a system prompt and alternating user/assistant turns, plus where it lives.

Turns keep their text for display and, once a local backend has seen them, the exact token ids
they occupy in the model's context (`ids`, tagged with the tokenizer they belong to), so the
next prompt repeats those ids exactly and the KV cache can be reused. `context_start` is the
index of the oldest turn still in the model's context (older ones were dropped to fit).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from .sanitize import printable

ROLES = ("user", "assistant")
# Ids name the autosave file (`<id>.json`), so they are chatterm's own, never a file's say-so: an
# id read from a file that is not of this form (`../../x`, `/home/me/model`) is replaced.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,80}")


def new_conversation_id() -> str:
    """A fresh id: the time it was made (sorts well) and 8 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


def is_valid_id(value: object) -> bool:
    """Whether `value` can be a conversation id: 1-80 of `A-Z a-z 0-9 _ -`, nothing else."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


@dataclass(eq=False)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    stopped: bool = False  # an assistant reply cut short (Esc, error, length)
    note: str = ""  # a short remark shown under the turn ("stopped", an error message)
    ids: list[int] | None = field(default=None, repr=False)  # tokens in context, see module doc
    ids_key: str = field(default="", repr=False)  # which tokenizer/template produced `ids`

    def to_dict(self) -> dict:
        data = {"role": self.role, "text": self.text}
        if self.stopped:
            data["stopped"] = True
        if self.note:
            data["note"] = self.note
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Turn":
        role, text = data.get("role"), data.get("text")
        if role not in ROLES or not isinstance(text, str):
            raise ValueError(f"bad turn {data!r:.80}")
        return cls(role=role, text=text, stopped=bool(data.get("stopped")), note=str(data.get("note", "")))


@dataclass(eq=False)
class Conversation:
    system: str = ""
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=new_conversation_id)  # names the autosave file; see is_valid_id
    created: float = field(default_factory=time.time)
    context_start: int = 0  # oldest turn still in the model's context
    name: str = ""  # a title the user gave it (the chats list's rename); "" shows the first message
    model: str = ""  # the model that last replied, for the chats list

    @property
    def title(self) -> str:
        if self.name.strip():
            return " ".join(self.name.split())
        first = next((t.text for t in self.turns if t.role == "user"), "")
        first = " ".join(first.split())
        return (first[:60] + "…") if len(first) > 60 else (first or "New chat")

    def add(self, role: str, text: str, **kwargs) -> Turn:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        turn = Turn(role=role, text=text, **kwargs)
        self.turns.append(turn)
        return turn

    def pop_exchange(self) -> list[Turn]:
        """Remove the last user message and everything after it (the undo of one exchange)."""
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i].role == "user":
                removed, self.turns = self.turns[i:], self.turns[:i]
                self.context_start = min(self.context_start, len(self.turns))
                return removed
        return []

    def pop_reply(self) -> Turn | None:
        """Remove the last assistant turn (before regenerating it)."""
        if self.turns and self.turns[-1].role == "assistant":
            return self.turns.pop()
        return None

    def clear(self) -> None:
        self.turns.clear()
        self.context_start = 0

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "created": self.created,
            "system": self.system,
            "turns": [t.to_dict() for t in self.turns],
            **{key: value for key, value in (("name", self.name), ("model", self.model)) if value},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Conversation":
        if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
            raise ValueError("not a chatterm conversation")
        if not all(isinstance(t, dict) for t in data["turns"]):
            raise ValueError("not a chatterm conversation (a turn is not an object)")
        conv = cls(system=str(data.get("system", "")), turns=[Turn.from_dict(t) for t in data["turns"]])
        if is_valid_id(data.get("id")):
            conv.id = data["id"]  # anything else keeps the fresh id made above
        for key in ("name", "model"):
            if isinstance(data.get(key), str):
                setattr(conv, key, data[key])
        if isinstance(data.get("created"), (int, float)):
            conv.created = float(data["created"])
        return conv

    def to_markdown(self) -> str:
        """The conversation as Markdown; escape sequences are dropped, so `cat` shows it inertly."""
        lines = [f"# {printable(self.title)}", ""]
        if self.system:
            lines += [f"**System:** {printable(self.system)}", ""]
        for turn in self.turns:
            who = "User" if turn.role == "user" else "Assistant"
            note = f" *({printable(turn.note)})*" if turn.note else ""
            lines += [f"**{who}:** {printable(turn.text)}" + note, ""]
        return "\n".join(lines)
