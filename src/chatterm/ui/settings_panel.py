"""The side panel of live sampling settings.

Every keystroke is validated by `SamplingSettings.set` (the same check as flags, `/set` and the
config file). A valid value is applied at once, so the generator uses it for the very next
token, even mid-reply; an invalid one is refused inline with the reason and the previous value
stays in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static

from ..engine.settings import SPECS, SamplingSettings

FIELDS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repetition_window", "max_new_tokens", "seed", "stop"]
LABELS = {"top_k": "top-k", "top_p": "top-p", "min_p": "min-p", "repetition_penalty": "rep. penalty",
          "repetition_window": "penalty window", "max_new_tokens": "max tokens", "stop": "stop (a|b)"}


class SettingsPanel(VerticalScroll):
    @dataclass
    class Changed(Message):
        name: str  # a setting name, or "system"

    def __init__(self, settings: SamplingSettings, system: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.system = system
        self.border_title = "Settings"

    def compose(self) -> ComposeResult:
        for name in FIELDS:
            with Horizontal(classes="setting-row"):
                yield Label(LABELS.get(name, name), classes="setting-label")
                yield Input(self._shown(name), id=f"set-{name}", classes="setting", tooltip=SPECS[name].help)
            yield Static("", id=f"err-{name}", classes="setting-error")
        yield Label("system prompt (Enter applies)", classes="system-label")
        yield Input(self.system, id="set-system", classes="setting", placeholder="none")

    def _shown(self, name: str) -> str:
        if name == "seed" and self.settings.seed is None:
            return "random"
        if name == "stop":
            return "|".join(s.replace("\n", "\\n") for s in self.settings.stop)
        return self.settings.describe(name)

    @on(Input.Changed, ".setting")
    def _changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("set-")
        if name not in SPECS:
            return
        error = self.query_one(f"#err-{name}", Static)
        try:
            old = getattr(self.settings, name)
            self.settings.set(name, event.value)
        except ValueError as e:
            error.update(Text(str(e).split(": ", 1)[-1]))
            error.add_class("-shown")
            event.input.add_class("-invalid")
            return
        error.update("")
        error.remove_class("-shown")
        event.input.remove_class("-invalid")
        if getattr(self.settings, name) != old:
            self.post_message(self.Changed(name))

    @on(Input.Submitted, "#set-system")
    def _system(self, event: Input.Submitted) -> None:
        self.system = event.value
        self.post_message(self.Changed("system"))

    def refresh_values(self, system: str | None = None) -> None:
        """Show the current settings (after `/set`, a config reload, ...)."""
        for name in FIELDS:
            field = self.query_one(f"#set-{name}", Input)
            with field.prevent(Input.Changed):
                field.value = self._shown(name)
            field.remove_class("-invalid")
            self.query_one(f"#err-{name}", Static).remove_class("-shown")
        if system is not None:
            self.system = system
            with self.query_one("#set-system", Input).prevent(Input.Submitted):
                self.query_one("#set-system", Input).value = system
