"""The side panel of live sampling settings: one row per setting in `SPECS`.

Every keystroke is validated by the same check as flags, `/set` and the config file. A valid
value goes into the session layer at once, so the generator uses it for the very next token,
even mid-reply; an invalid one is refused inline with the reason and the previous value stays in
force. The panel changes this session only; Ctrl+S (while a field has focus) saves the
session's values and system prompt as defaults. Each field's tooltip says where its value
comes from (built-in, model, config, command line, session).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static

from ..engine.settings import SPECS, TYPED, parse_value
from ..session.user.layered_settings import SESSION, LayeredSettings


class SettingsPanel(VerticalScroll):
    # Not in the footer (the panel's frame says "^s save as defaults"): the app's keys must fit.
    BINDINGS = [Binding("ctrl+s", "save_defaults", "Save as defaults", show=False, id="save_defaults")]

    @dataclass
    class Changed(Message):
        name: str  # a setting name, or "system"

    class SaveDefaults(Message):
        """The user asked to keep this session's settings as defaults."""

    def __init__(self, settings: LayeredSettings, system: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.system = system
        self.unsupported: dict[str, str] = {}  # setting -> why the backend ignores it
        self.border_title = "Settings"
        self.border_subtitle = "^s save as defaults"

    def compose(self) -> ComposeResult:
        for spec in SPECS.values():
            with Horizontal(classes="setting-row"):
                yield Label(spec.label, classes="setting-label")
                yield Input(self._text_of(spec.name), id=f"set-{spec.name}", classes="setting",
                            tooltip=self._tooltip_for(spec.name))
            yield Static("", id=f"err-{spec.name}", classes="setting-error")
        yield Label("system prompt (Enter applies)", classes="system-label")
        yield Input(self.system, id="set-system", classes="setting", placeholder="none")

    def _text_of(self, name: str) -> str:
        return self.settings.live.describe(name)

    def _tooltip_for(self, name: str) -> str:
        unused = f"\nnot used by this model: {self.unsupported[name]}" if name in self.unsupported else ""
        return f"{SPECS[name].help}\nnow {self.settings.describe(name)}{unused}"

    @on(Input.Changed, ".setting")
    def _changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("set-")
        if name not in SPECS:
            return
        error = self.query_one(f"#err-{name}", Static)
        try:
            value = parse_value(SPECS[name], event.value)
        except ValueError as e:
            error.update(Text(str(e).split(": ", 1)[-1]))
            error.display = True
            event.input.add_class("-invalid")
            return
        error.display = False
        event.input.remove_class("-invalid")
        if value != getattr(self.settings.live, name):  # (a field filled in on mount changes nothing)
            self.settings.set(name, value, SESSION, how=TYPED)
            event.input.tooltip = self._tooltip_for(name)
            self.post_message(self.Changed(name))

    @on(Input.Submitted, "#set-system")
    def _system(self, event: Input.Submitted) -> None:
        self.system = event.value
        self.post_message(self.Changed("system"))

    def action_save_defaults(self) -> None:
        self.post_message(self.SaveDefaults())

    def show_when_changes_apply(self, mid_reply: bool) -> None:
        """A server fixes a request's settings when it is sent: say so in the panel's title."""
        self.border_title = "Settings" if mid_reply else "Settings · apply from the next reply"

    def mark_unsupported(self, reasons: dict[str, str | None]) -> None:
        """Grey out the settings the backend does not honour (a server that refuses top_k, say),
        with the reason as the tooltip. The value still applies if the backend learns to."""
        self.unsupported = {name: reason for name, reason in reasons.items() if reason}
        for name in SPECS:
            field = self.query_one(f"#set-{name}", Input)
            field.set_class(name in self.unsupported, "-unsupported")
            field.tooltip = self._tooltip_for(name)

    def refresh_values(self, system: str | None = None) -> None:
        """Show the values in force (after `/set`, a model's recommendation, ...)."""
        for name in SPECS:
            field = self.query_one(f"#set-{name}", Input)
            with field.prevent(Input.Changed):
                field.value = self._text_of(name)
            field.tooltip = self._tooltip_for(name)
            field.remove_class("-invalid")
            self.query_one(f"#err-{name}", Static).display = False
        if system is not None:
            self.system = system
            with self.query_one("#set-system", Input).prevent(Input.Submitted):
                self.query_one("#set-system", Input).value = system
