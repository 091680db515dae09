"""The side column: the settings panel above the token inspector, each shown or hidden by its key.

It owns its toggling through reactive attributes. On a wide screen a key shows or hides its
panel beside the chat (the column goes when both are hidden). On a narrow one (the screen's
`-narrow` breakpoint, set by Textual) the column is folded away; a key opens it over the chat
(`overlay`), and the next key closes it again.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from ..session.layered_settings import LayeredSettings
from .inspector import TokenInspector
from .settings_panel import SettingsPanel


class SidePanel(Vertical):
    settings_shown: reactive[bool] = reactive(True)
    inspector_shown: reactive[bool] = reactive(True)
    overlay: reactive[bool] = reactive(False, toggle_class="-overlay")  # open over the chat (narrow screens)
    collapsed: reactive[bool] = reactive(False, toggle_class="-collapsed")  # both panels hidden

    def __init__(self, settings: LayeredSettings, system: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._system = system

    def compose(self) -> ComposeResult:
        yield SettingsPanel(self._settings, self._system, id="settings")
        yield TokenInspector(id="inspector")

    @property
    def narrow(self) -> bool:
        return self.screen.has_class("-narrow")

    def toggle(self, panel: str) -> bool:
        """Show or hide "settings" or "inspector"; True when it is now visible (focus it then)."""
        attribute = f"{panel}_shown"
        if self.narrow:
            self.overlay = not self.overlay
            if self.overlay:
                setattr(self, attribute, True)
            return self.overlay
        setattr(self, attribute, not getattr(self, attribute))
        return getattr(self, attribute)

    def watch_settings_shown(self, shown: bool) -> None:
        self.query_one(SettingsPanel).display = shown
        self._update_display()

    def watch_inspector_shown(self, shown: bool) -> None:
        self.query_one(TokenInspector).display = shown
        self._update_display()

    def _update_display(self) -> None:
        self.collapsed = not (self.settings_shown or self.inspector_shown)
