"""The TUI's side of slash commands: the `FrontEnd` (session/commands.py) that renders results.

The commands themselves run in `session.commands.SlashCommands`, shared with the plain REPL;
this mixin only shows what they report: notes, the conversation redrawn, the settings panel
refreshed, a retried reply streamed, a theme applied.

Notes are of two sorts. Passing ones (a one-line "info": `temperature = 0.2 (session)`, `copied
message 6`, a version switched to) go to the status bar, and when they are longer than it holds,
to a toast as well: the transcript keeps what is part of the chat, and they never land between a
question and its answer. The rest (errors, several lines such as /help and /settings, the
system prompt, the welcome) are written in the chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from textual.binding import Binding

from ..session.context_fit import fit_context
from ..session.sanitize import printable
from .chat_view import AssistantMessage, Note
from .status_bar import NOTE_CELLS
from .thinking_block import ThinkingBlock

EXTRA_KEYS = ["Enter    send (while a reply streams or the model loads: queued, Esc takes it back)",
              "^j       new line (also Alt+Enter)", "↑/↓      earlier messages",
              "Esc      also closes the panels opened over a narrow screen",
              "←/→ [ ]  step through tokens (inspector focused)", "^s       save settings as defaults (panel focused)",
              "^p       command palette"]


class TuiFrontEnd:
    """Mixed into ChatApp."""

    @property
    def busy(self) -> bool:
        return self.replies.active

    def note(self, text: str, kind: str = "info") -> None:
        if kind == "info" and "\n" not in text:  # a passing note (see the module doc)
            self.status_note(text)
            return
        self.chat.mount(Note(text, kind))

    def welcome(self) -> None:
        """On the first run (no chat saved yet), once per launch: which model is loaded, where
        chats are saved, and where help is."""
        if getattr(self, "_welcomed", False):
            return
        self._welcomed = True
        store = self.session.store
        if store is None or store.recent(1) or self.session.backend is None:
            return
        folder = str(store.folder)
        home = str(Path.home())
        if folder.startswith(home + "/"):
            folder = "~" + folder[len(home):]
        self.note(f"Welcome to chatterm! You are chatting with {self.session.backend.info.name}. "
                  f"Chats are saved as you go, in {folder}. F1 or /help: commands and keys; "
                  "Ctrl+P: every action.", "welcome")
        from ..session.user.installed_models import real_model_hint

        if hint := real_model_hint(self.session.backend.info.source):
            self.note(hint, "welcome")

    def status_note(self, short: str, detail: str = "") -> None:
        """A passing note in the status bar; `detail`, or a note too long for the bar, is also
        shown in full in a toast (the bar keeps the short form)."""
        self.recent_notes.append(detail or short)
        if detail or len(short) > NOTE_CELLS:
            self.notify(printable(detail or short), timeout=6, markup=False)
        self.status.note = short

    def show_conversation(self) -> None:
        """Redraw after /clear, /load, /undo, /edit: the status note was about the old state, and
        a loaded chat may not fit the model's window (marked, and the meter counts what fits)."""
        self.status.note = ""
        fit_context(self.session)
        self.chat.show_conversation(self.session.conversation)
        self._inspect_reply_on_screen()
        if hasattr(self, "queue"):
            self.queue.reshow()
        self.call_after_refresh(self.mark_messages)  # message_actions.py: "2/3", the selection
        self.update_context()

    def _inspect_reply_on_screen(self) -> None:
        """The inspector follows the conversation: after Alt+Left/Right or an undo it shows the
        tokens of the last reply now on screen, never those of one that is gone."""
        if self.busy:
            return
        replies = [t for t in self.session.conversation.turns if t.role == "assistant"]
        if not replies:
            self.inspector.reset()
        elif replies[-1] in self.token_records:
            self.inspector.restore(self.token_records[replies[-1]])
        else:
            self.inspector.reset("The reply on screen was not written in this session, so its tokens "
                                 "were not recorded; /retry writes a new version.")

    def show_settings(self) -> None:
        self.settings_panel.refresh_values(system=self.session.conversation.system)
        self.update_context()

    def stream_reply(self, events: Iterable) -> None:
        assistant_turns = sum(t.role == "assistant" for t in self.session.conversation.turns)
        shown = self.chat.query(AssistantMessage)
        if len(shown) > assistant_turns:  # a retry: the reply being replaced goes, reasoning and all
            if block := self.chat.thinking_of(shown.last()):
                block.remove()
            shown.last().remove()
        self.replies.start(events)

    def show_chats(self, chats: list, query: str = "") -> None:
        from .chats_screen import ChatsScreen  # reads the list again itself, after every change

        if not isinstance(self.screen, ChatsScreen):
            self.push_screen(ChatsScreen(self.commands, query))

    def toggle_thinking(self) -> None:
        """F4 and `/think`: open or fold the selected reply's reasoning, else the last one's."""
        selected = [w for w in self.chat.query(".message.-selected") if isinstance(w, AssistantMessage)]
        blocks = [self.chat.thinking_of(selected[0])] if selected else list(self.chat.query(ThinkingBlock))
        if not blocks or blocks[-1] is None:
            self.status_note("no thinking to show" if not selected else "this reply has no thinking")
            return
        blocks[-1].toggle()

    def set_theme(self, name: str) -> None:
        if name not in self.available_themes:
            raise ValueError(f"unknown theme {name!r}; themes: {', '.join(sorted(self.available_themes))}")
        self.theme = name

    def key_help(self) -> list[str]:
        return [f"{key:<8} {title}" for title, key, _ in self.action_entries()] + EXTRA_KEYS

    def quit(self) -> None:
        self.session.stop()  # a streaming reply ends within a token, so the exit never waits on it
        self.exit()

    def action_entries(self) -> list[tuple[str, str, str]]:
        """(title, key as shown, action) for every bound action, keys as remapped by the config."""
        entries = []
        for binding in self.BINDINGS:
            key = self.checked_keys.get(binding.id, binding.key) if binding.id else binding.key
            shown = self.get_key_display(Binding(key.split(",")[0], binding.action))
            entries.append((self.ACTION_HELP.get(binding.action, binding.description), shown, binding.action))
        return entries
