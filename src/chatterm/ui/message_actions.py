"""What the TUI does with single messages: select, edit, continue, alternatives, copy, $EDITOR.

A mixin of ChatApp. The conversation work runs in the session (`ChatSession`) and the slash
commands (`/continue`, `/edit N`, `/alt`, `/copy`, `/editor`); the key actions here pick the
message and call those, and the `FrontEnd` methods here render what the commands report.

- Selection: Alt+Up / Alt+Down move a highlight over the messages on screen while the message
  box keeps focus (Esc clears it); Ctrl+O, Alt+C and Alt+Left/Right act on the selected message,
  or by default on the last user message, the last reply, the last message with alternatives.
- Messages with sibling versions show "2/3" in their title (`mark_messages`).
- Editing: the message's text goes into the message box, whose title says so; Enter replaces
  the message (`submit_edit`), Esc cancels.
- The editor gets the terminal while it runs (`App.suspend`); under a test's headless driver it
  simply runs.
"""

from __future__ import annotations

from typing import Iterable

from textual.app import SuspendNotSupported

from .prompt_input import PromptInput


class MessageActions:
    """Mixed into ChatApp (needs its session, commands, chat, replies)."""

    selected: int | None = None  # index in the conversation's turns of the highlighted message
    _send_title = ""  # the message box's title, while it says that a message is being edited

    # -- the messages on screen ----------------------------------------------------------------

    def message_widgets(self) -> list:
        """The chat's message widgets in order: the i-th stands for turn i."""
        return list(self.chat.query("UserMessage, AssistantMessage"))

    def mark_messages(self) -> None:
        """Titles ("Assistant · 2/3") and the selection highlight, from the conversation."""
        turns = self.session.conversation.turns
        if self.selected is not None and self.selected >= len(turns):
            self.selected = None
        for i, (widget, turn) in enumerate(zip(self.message_widgets(), turns)):
            fork = turn.fork
            count = f"{fork.shown + 1}/{len(fork.options)}" if fork is not None and len(fork.options) > 1 else ""
            widget.set_version(count)  # the title keeps "out of context" too (chat_view.TurnMessage)
            widget.set_class(i == self.selected, "-selected")

    def select_message(self, index: int | None) -> None:
        self.selected = index
        self.mark_messages()
        widgets = self.message_widgets()
        if index is not None and index < len(widgets):
            self.chat.scroll_to_widget(widgets[index], animate=False)

    def action_select_previous(self) -> None:
        count = len(self.session.conversation.turns)
        if count:
            self.select_message(count - 1 if self.selected is None else max(0, self.selected - 1))

    def action_select_next(self) -> None:
        count = len(self.session.conversation.turns)
        if self.selected is not None:
            self.select_message(self.selected + 1 if self.selected + 1 < count else None)

    def _selected_number(self) -> str:
        """The selection as a message number for a slash command ("" for none)."""
        return "" if self.selected is None else str(self.selected + 1)

    def cancel_edit_or_selection(self) -> bool:
        """Esc: cancel an edit, else drop the selection. True if there was one of them."""
        if self.session.editing is not None:
            self.session.cancel_edit()
            self.query_one(PromptInput).clear()
            self._end_edit_title()
            return True
        if self.selected is not None:
            self.select_message(None)
            return True
        return False

    # -- key actions: each runs the slash command on the selected message -----------------------

    def action_edit(self) -> None:
        self.commands.run(f"/edit {self._selected_number()}")

    def action_continue(self) -> None:
        if self._can_reply():
            self.commands.run("/continue")

    def action_copy(self) -> None:
        self.commands.run(f"/copy {self._selected_number()}")

    def action_previous_alternative(self) -> None:
        self.commands.run(f"/alt {self._selected_number()} prev")

    def action_next_alternative(self) -> None:
        self.commands.run(f"/alt {self._selected_number()} next")

    def action_editor(self) -> None:
        """/editor on the draft in the box, kept exactly (a command line would be stripped)."""
        try:
            text = self.run_editor(self.query_one(PromptInput).text)
        except ValueError as e:
            self.note(str(e), "error")
            return
        self.edit_text(text)

    # -- editing -------------------------------------------------------------------------------

    def submit_edit(self, text: str) -> None:
        """Enter while editing: replace the message; a user message gets a new reply."""
        index = self.session.editing
        role = self.session.conversation.turns[index].role if index is not None else "user"
        if role == "user" and not self._can_reply():
            return
        try:
            events = self.session.submit_edit(text, inspect=self.inspect)
        except ValueError as e:
            self.note(str(e), "error")
            return
        self._end_edit_title()
        self.selected = None
        self.show_conversation()
        if events is not None:
            self.replies.start(events)
        else:
            self.note(f"message {index + 1} replaced; {self._key('continue')} continues it")

    def _end_edit_title(self) -> None:
        if self._send_title:
            self.query_one(PromptInput).border_title, self._send_title = self._send_title, ""

    def _key(self, action: str) -> str:
        return next((key for _, key, name in self.action_entries() if name == action), action)

    # -- the FrontEnd methods for these commands (session/commands.py) -------------------------

    def edit_text(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()
        index = self.session.editing
        if index is not None:
            what = "reply" if self.session.conversation.turns[index].role == "assistant" else "message"
            self._send_title = self._send_title or str(prompt.border_title)
            prompt.border_title = f"Editing {what} {index + 1} · Enter replaces it · Esc cancels"

    def stream_more(self, events: Iterable) -> None:
        """Stream a continuation into the last reply on screen."""
        self.replies.start(events, into=self.chat.last_assistant())

    def copy_text(self, text: str) -> None:
        self.copy_to_clipboard(text)  # OSC 52: the terminal copies, over SSH too

    def run_editor(self, text: str) -> str:
        from ..session.external_editor import compose_in_editor

        if self.is_headless:  # a test's driver: no terminal to hand over
            return compose_in_editor(text)
        try:
            with self.suspend():
                return compose_in_editor(text)
        except SuspendNotSupported:
            raise ValueError("the editor needs a terminal, and this one cannot be handed over (a browser?)") from None
