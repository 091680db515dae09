"""The chats list (`/chats`, `chatterm --resume`): a modal screen driven by the keyboard.

Up/Down choose a chat, Enter opens it, r renames it (a line to type the title in; Enter keeps it,
Esc cancels), d deletes it after a y/n question, Esc closes the screen. `/` goes to the filter
line: what is typed there keeps the chats whose title or messages hold it (every saved chat is
searched, not only the recent ones); Up/Down and Enter still choose and open, Esc goes back to
the list. Lines are cut to the box's width, so they never wrap. The work is done by the
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

HINT = "↑↓ choose · Enter open · / filter · r rename · d delete · Esc close"


class ChatsScreen(ModalScreen[None]):
    CSS_PATH = "chats_screen.tcss"
    BINDINGS = [
        Binding("escape", "back", "Close", id="chats.close"),
        Binding("r", "rename", "Rename", id="chats.rename"),
        Binding("d", "delete", "Delete", id="chats.delete"),
        Binding("slash", "filter", "Filter", id="chats.filter"),
        Binding("y", "confirm(True)", "Yes", show=False),
        Binding("n", "confirm(False)", "No", show=False),
    ]

    def __init__(self, commands, query: str = "") -> None:
        """`commands`: the app's SlashCommands (its `saved_chats` lists, renames and deletes);
        `query`: the filter to start with (`/chats TEXT`)."""
        super().__init__()
        self.commands = commands
        self.query_text = query
        self.saved = commands.saved_chats
        self.chats = []
        self.deleting: str | None = None  # the id awaiting y/n

    def compose(self) -> ComposeResult:
        with Vertical(id="chats-box") as box:
            box.border_title = "Chats"
            box.border_subtitle = HINT
            yield Input(self.query_text, id="chats-filter", placeholder="/ to filter: words from any message")
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
            self.chats = self.saved.recent(query=self.query_text)
        except ValueError as e:
            self.chats, said = [], str(e)
        # The box's inner width (chats_screen.tcss: 90% of the screen, at most 110, border,
        # padding and the scroll bar): an option wider than that would wrap onto a second line.
        width = max(20, min(110, self.app.size.width * 9 // 10) - 6)
        listing.clear_options()
        listing.add_options([Option(chat_line(i + 1, chat, width), id=chat.id) for i, chat in enumerate(self.chats)])
        if self.chats:
            listing.highlighted = min(keep or 0, len(self.chats) - 1)
        empty = f"no saved chat holds {self.query_text!r}" if self.query_text.strip() else "no saved chats"
        self.say("; ".join(part for part in (said, "" if self.chats else empty) if part))

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

    def action_filter(self) -> None:
        self.query_one("#chats-filter", Input).focus()

    @on(Input.Changed, "#chats-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.reload()

    @on(Input.Submitted, "#chats-filter")
    def _filter_submitted(self) -> None:
        if self.chosen is not None:
            self.query_one(OptionList).action_select()

    def on_key(self, event) -> None:
        """In the filter line, Up/Down still move through the list."""
        if self.focused is self.query_one("#chats-filter") and event.key in ("up", "down"):
            listing = self.query_one(OptionList)
            listing.action_cursor_up() if event.key == "up" else listing.action_cursor_down()
            event.stop()

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
        if self.focused is self.query_one("#chats-filter"):
            self.query_one(OptionList).focus()
        elif self.query_one("#chats-rename").display:
            self._close_rename()
            self.say("rename cancelled")
        elif self.deleting is not None:
            self.deleting = None
            self.say("kept")
        else:
            self.dismiss(None)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # While a title or a filter is typed, letters are text, not commands.
        renaming = self.is_mounted and self.query("#chats-rename") and self.query_one("#chats-rename").display
        filtering = self.is_mounted and self.query("#chats-filter") and self.focused is self.query_one("#chats-filter")
        return not ((renaming or filtering) and action in ("rename", "delete", "confirm", "filter"))
