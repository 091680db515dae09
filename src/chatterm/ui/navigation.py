"""Keyboard navigation, mixed into ChatApp: scrolling the chat, the panels' keys, and Esc.

The message box keeps the focus unless the user moves it: PageUp/PageDown (with or without
Shift) and Ctrl+Home/Ctrl+End scroll the chat from wherever the focus is (the message box
forwards them, see prompt_input.py). F2/F3 focus their panel when it is shown but not focused,
hide it when it has the focus, and show and focus it when hidden (side_panel.py); a hidden panel
always hands the focus back to the message box, and so does a terminal narrowed while the focus
was in the side column (which then folds away). Esc does the first of: stop the streaming reply
(and take a queued message back into the box), take a queued message back, cancel an edit or
drop the selected message (message_actions.py), close the panels opened over a narrow screen,
leave a side panel for the message box.
"""

from __future__ import annotations

from .prompt_input import PromptInput


class Navigation:
    """Mixed into ChatApp (needs chat, side, inspector, queue, session, busy, MessageActions)."""

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def action_scroll_chat(self, where: str) -> None:
        self.chat.scroll_by_key(where)

    def action_toggle_settings(self) -> None:
        if self.side.press("settings"):
            self.query_one("#set-temperature").focus()
        else:
            self.prompt.focus()

    def action_toggle_inspector(self) -> None:
        if self.side.press("inspector"):
            self.inspector.focus()
        else:
            self.prompt.focus()

    def action_stop(self) -> None:
        if self.busy:
            self.session.stop()
            self.take_back_queued()
        elif self.queue.pending:
            self.take_back_queued()
        elif self.cancel_edit_or_selection():  # message_actions.py: an edit, or the selected message
            return
        elif self.side.close_overlay() or self.side.has_focus_within:
            self.prompt.focus()

    def keep_focus(self) -> None:
        """From now on, focus that is lost (Textual drops it when the focused widget is hidden, as
        when a narrowed terminal folds the side column away) goes back to the message box."""
        self.watch(self.screen, "focused", self._refocus_if_lost, init=False)

    def _refocus_if_lost(self, focused) -> None:
        if focused is None:
            self.call_after_refresh(self._focus_prompt_if_nothing_has_focus)

    def _focus_prompt_if_nothing_has_focus(self) -> None:
        if self.screen.focused is None and self.screen is self.prompt.screen:
            self.prompt.focus()

    def take_back_queued(self) -> None:
        """The queued message goes back into the message box, before anything typed since."""
        text = self.queue.take()
        if not text:
            return
        typed = self.prompt.text
        self.edit_text(f"{text}\n{typed}" if typed.strip() else text)
        self.status_note("queued message back in the box")
