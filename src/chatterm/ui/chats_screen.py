"""The chats list (`/chats`, `chatterm --resume`): a modal screen driven by the keyboard.

Up/Down choose a chat, Enter opens it, r renames it (a line to type the title in; Enter keeps it,
Esc cancels), d deletes it after a y/n question, Esc closes the screen. The work is done by the
session's `SavedChats` (session/saved_chats.py): opening goes through the `/load` command, so it
behaves exactly as typing `/load ID`; a refusal (a chat open in another chatterm, say) is shown on
the screen's own line. Titles are made inert before they are shown (and shown as plain text).
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from ..session.saved_chats import chat_line, summary_title

HINT = "↑↓ choose · Enter open · r rename · d delete · Esc close"


class ChatsScreen(ModalScreen[None]):
    CSS_PATH = "chats_screen.tcss"
    BINDINGS = [
        Binding("escape", "back", "Close", id="chats.close"),
        Binding("r", "rename", "Rename", id="chats.rename"),
        Binding("d", "delete", "Delete", id="chats.delete"),
        Binding("y", "confirm(True)", "Yes", show=False),
        Binding("n", "confirm(False)", "No", show=False),
    ]

    def __init__(self, commands) -> None:
        """`commands`: the app's SlashCommands (its `saved_chats` lists, renames and deletes)."""
        super().__init__()
        self.commands = commands
        self.saved = commands.saved_chats
        self.chats = []
        self.deleting: str | None = None  # the id awaiting y/n

    def compose(self) -> ComposeResult:
        with Vertical(id="chats-box") as box:
            box.border_title = "Chats"
            box.border_subtitle = HINT
            yield OptionList(id="chats-list", markup=False)
            yield Input(id="chats-rename", placeholder="new title (empty: the first message)")
            yield Label("", id="chats-status", markup=False)

    def on_mount(self) -> None:
        self.query_one("#chats-rename").display = False
        self.reload()
        self.query_one(OptionList).focus()

    def reload(self, keep: int | None = None, said: str = "") -> None:
        """Read the list again (newest first), keeping the highlight near `keep`; `said` is
        shown on the status line (what was just done)."""
        listing = self.query_one(OptionList)
        try:
            self.chats = self.saved.recent()
        except ValueError as e:
            self.chats, said = [], str(e)
        width = max(40, self.app.size.width - 8)
        listing.clear_options()
        listing.add_options([Option(chat_line(i + 1, chat, width), id=chat.id) for i, chat in enumerate(self.chats)])
        if self.chats:
            listing.highlighted = min(keep or 0, len(self.chats) - 1)
        self.say("; ".join(part for part in (said, "" if self.chats else "no saved chats") if part))

    def say(self, text: str) -> None:
        self.query_one("#chats-status", Label).update(summary_title(text, 200))

    @property
    def chosen(self):
        index = self.query_one(OptionList).highlighted
        return self.chats[index] if index is not None and index < len(self.chats) else None

    @on(OptionList.OptionSelected, "#chats-list")
    def open_chat(self, event: OptionList.OptionSelected) -> None:
        if self.deleting is not None:
            return
        if self.app.busy:
            self.say("a reply is still streaming; Esc closes this list, then Esc stops the reply")
            return
        self.dismiss(None)
        self.commands.run(f"/load {event.option_id}")

    def action_rename(self) -> None:
        chat = self.chosen
        if chat is None or self.deleting is not None:
            return
        field = self.query_one("#chats-rename", Input)
        field.value = chat.title
        field.display = True
        field.focus()
        self.say("type the new title · Enter: rename · Esc: cancel")

    @on(Input.Submitted, "#chats-rename")
    def finish_rename(self, event: Input.Submitted) -> None:
        chat = self.chosen
        self._close_rename()
        if chat is None:
            return
        try:
            said = self.saved.rename(chat.id, event.value)
        except ValueError as e:
            said = str(e)
        self.reload(keep=self.query_one(OptionList).highlighted, said=said)
        self.commands.front.show_settings()  # the open chat's title may have changed

    def _close_rename(self) -> None:
        field = self.query_one("#chats-rename", Input)
        field.display = False
        self.query_one(OptionList).focus()

    def action_delete(self) -> None:
        chat = self.chosen
        if chat is None:
            return
        self.deleting = chat.id
        self.say(f"delete “{summary_title(chat.title, 36)}”? y: delete · n or Esc: keep")

    def action_confirm(self, yes: bool) -> None:
        if self.deleting is None:
            return
        chat_id, self.deleting = self.deleting, None
        if not yes:
            self.say("kept")
            return
        try:
            said = self.saved.delete(chat_id)
        except ValueError as e:
            said = str(e)
        self.reload(keep=self.query_one(OptionList).highlighted, said=said)

    def action_back(self) -> None:
        if self.query_one("#chats-rename").display:
            self._close_rename()
            self.say("rename cancelled")
        elif self.deleting is not None:
            self.deleting = None
            self.say("kept")
        else:
            self.dismiss(None)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # While the title is typed, letters are text, not commands.
        renaming = self.is_mounted and self.query("#chats-rename") and self.query_one("#chats-rename").display
        return not (renaming and action in ("rename", "delete", "confirm"))
