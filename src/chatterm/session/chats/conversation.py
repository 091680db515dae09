"""A conversation: a system prompt and alternating user/assistant turns, plus where it lives.

Turns keep their text for display and, once a local backend has seen them, the exact token ids
they occupy in the model's context (`ids`, tagged with the tokenizer they belong to), so the
next prompt repeats those ids exactly and the KV cache can be reused. `context_start` is the
index of the oldest turn still in the model's context (older ones were dropped to fit).

Alternatives (branches): `turns` is always the branch on screen. A message that has sibling
versions (a regenerated reply, an edited message) carries a `Fork` shared by all of them; each
option is a version with the turns that followed it. `branch_at` starts a new option (the next
turn added at that index joins the fork), `switch` shows another one. Saved files keep the shown
branch in "turns", as before, and the other options on the forked turn ("alternatives"), so files
written before forks existed load unchanged and older readers see the shown branch.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from ..sanitize import printable

ROLES = ("user", "assistant")
MAX_MESSAGE_CHARS = 200_000  # one message; a 100 KB paste is fine, megabytes are almost surely a mistake
FORMAT_VERSION = 2  # 1 (no "version" key): no alternatives
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
    fork: "Fork | None" = field(default=None, repr=False)  # its sibling versions, see module doc
    # A thinking model's reasoning before this reply (engine/thinking.py): shown and saved, never
    # part of `text`, so it is never sent back to the model.
    thinking: str = ""
    thinking_tokens: int = 0

    def to_dict(self, *, with_fork: bool = True) -> dict:
        data = {"role": self.role, "text": self.text}
        if self.stopped:
            data["stopped"] = True
        if self.note:
            data["note"] = self.note
        if self.thinking:
            data["thinking"] = self.thinking
            data["thinking_tokens"] = self.thinking_tokens
        if self.fork is not None and with_fork:  # the siblings share the fork: written once, here
            others = [option for i, option in enumerate(self.fork.options) if i != self.fork.shown and option]
            data["alternatives"] = {"shown": self.fork.shown, "others": [
                [option[0].to_dict(with_fork=False), *(t.to_dict() for t in option[1:])] for option in others]}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Turn":
        role, text = data.get("role"), data.get("text")
        if role not in ROLES or not isinstance(text, str):
            raise ValueError(f"bad turn {data!r:.80}")
        turn = cls(role=role, text=text, stopped=bool(data.get("stopped")), note=str(data.get("note", "")))
        thinking, tokens = data.get("thinking"), data.get("thinking_tokens")
        if isinstance(thinking, str) and role == "assistant":
            turn.thinking = thinking
            turn.thinking_tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else 0
        alternatives = data.get("alternatives")
        if alternatives is not None:
            others, shown = alternatives.get("others"), alternatives.get("shown")
            if not isinstance(others, list) or not all(isinstance(o, list) and o for o in others) \
                    or not isinstance(shown, int) or not 0 <= shown <= len(others):
                raise ValueError("bad alternatives")
            options = [[Turn.from_dict(t) for t in o] for o in others]
            options.insert(shown, [turn])  # a stand-in: the shown option lives in Conversation.turns
            turn.fork = Fork(options, shown)
            for option in options:
                option[0].fork = turn.fork
        return turn


@dataclass(eq=False)
class Fork:
    """Sibling versions of one message. `options[i]` is version i with the turns that followed
    it; the entry of the `shown` one is stale (that branch is `Conversation.turns`)."""

    options: list[list[Turn]]
    shown: int


@dataclass(eq=False)
class Conversation:
    system: str = ""
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=new_conversation_id)  # names the autosave file; see is_valid_id
    created: float = field(default_factory=time.time)
    context_start: int = 0  # oldest turn still in the model's context
    # A fork waiting for its new option: the next turn added at this index joins it (branch_at).
    _pending: tuple[int, Fork] | None = field(default=None, repr=False)
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
        if self._pending is not None and self._pending[0] == len(self.turns):
            turn.fork = self._pending[1]
            turn.fork.options[turn.fork.shown] = [turn]
        self._pending = None
        self.turns.append(turn)
        return turn

    def up_to_last_reply(self) -> "Conversation":
        """The conversation that asked for its last turn, to continue that reply: everything
        but the last turn, which must be an assistant reply to a user message. Raises
        ValueError (one line) otherwise; the one place that refuses a /continue."""
        turns = self.turns
        if len(turns) < 2 or turns[-1].role != "assistant" or turns[-2].role != "user":
            raise ValueError("nothing to continue: the last message is not a reply")
        return Conversation(system=self.system, turns=turns[:-1], context_start=self.context_start)

    # -- alternatives (see the module doc) -----------------------------------------------------

    def branch_at(self, index: int) -> None:
        """Put `turns[index:]` aside as an alternative; the next turn added becomes a new sibling
        version of `turns[index]`, shown, and the conversation goes on from it."""
        if not 0 <= index < len(self.turns):
            raise ValueError(f"no message {index + 1}")
        self.cancel_branch()
        tail = self.turns[index:]
        fork = tail[0].fork
        if fork is None:
            fork = tail[0].fork = Fork([tail], 0)
        fork.options[fork.shown] = tail
        fork.options.append([])
        fork.shown = len(fork.options) - 1
        del self.turns[index:]
        self.context_start = min(self.context_start, index)
        self._pending = (index, fork)

    def cancel_branch(self) -> None:
        """The new version never came (the reply failed to start): show the previous one again."""
        if self._pending is None:
            return
        index, fork = self._pending
        self._pending = None
        if len(self.turns) == index and not fork.options[fork.shown]:
            del fork.options[fork.shown]
            fork.shown = len(fork.options) - 1
            self.turns.extend(fork.options[fork.shown])
            if len(fork.options) == 1:  # a fork of one is no fork
                fork.options[0][0].fork = None

    def switch(self, index: int, step: int) -> bool:
        """Show the sibling version `step` away (wrapping) of `turns[index]`, with its branch.
        False when that message has no alternatives."""
        fork = self.turns[index].fork if 0 <= index < len(self.turns) else None
        if fork is None or len(fork.options) < 2:
            return False
        self.cancel_branch()
        fork.options[fork.shown] = self.turns[index:]
        fork.shown = (fork.shown + step) % len(fork.options)
        self.turns[index:] = fork.options[fork.shown]
        self.context_start = min(self.context_start, index)
        return True

    def forked_indices(self) -> list[int]:
        """Indices of the shown messages that have sibling versions."""
        return [i for i, t in enumerate(self.turns) if t.fork is not None and len(t.fork.options) > 1]

    def pop_exchange(self) -> list[Turn]:
        """Remove the last user message and everything after it (the undo of one exchange)."""
        self.cancel_branch()
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i].role == "user":
                removed, self.turns = self.turns[i:], self.turns[:i]
                self.context_start = min(self.context_start, len(self.turns))
                return removed
        return []

    def clear(self) -> None:
        self.turns.clear()
        self.context_start = 0
        self._pending = None

    def to_dict(self) -> dict:
        return {
            "version": FORMAT_VERSION,
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
        """The branch on screen as Markdown; escape sequences are dropped, so `cat` shows it inertly."""
        lines = [f"# {printable(self.title)}", ""]
        if self.system:
            lines += [f"**System:** {printable(self.system)}", ""]
        for turn in self.turns:
            who = "User" if turn.role == "user" else "Assistant"
            note = f" *({printable(turn.note)})*" if turn.note else ""
            if turn.thinking:
                lines += ["**Assistant's thinking:**", "", *(f"> {line}".rstrip() for line in
                                                           printable(turn.thinking).split("\n")), ""]
            lines += [f"**{who}:** {printable(turn.text)}" + note, ""]
        return "\n".join(lines)
