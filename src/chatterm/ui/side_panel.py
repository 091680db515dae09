"""The side column: the settings panel above the token inspector, each shown or hidden by its key.

It owns its toggling through reactive attributes. On a wide screen a key shows or hides its
panel beside the chat (the column goes when both are hidden). On a narrow one (the screen's
`-narrow` breakpoint, set by Textual) the column is folded away; a key opens it over the chat
(`overlay`), and the next key closes it again. `press(panel)` is what F2/F3 do: a panel that is
shown but not focused gets the focus; one that has the focus is hidden (the app then gives the
focus back to the message box); a hidden one is shown and focused.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from ..session.user.layered_settings import LayeredSettings
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

    def panel(self, name: str) -> SettingsPanel | TokenInspector:
        return self.query_one(SettingsPanel if name == "settings" else TokenInspector)

    def is_visible(self, name: str) -> bool:
        """Whether the panel is on screen (shown, and on a narrow screen opened over the chat)."""
        return getattr(self, f"{name}_shown") and (self.overlay or not self.narrow)

    def press(self, name: str) -> bool:
        """F2 / F3 for "settings" / "inspector": True when the panel should take the focus now,
        False when it was hidden (the focus goes back to the message box)."""
        if self.is_visible(name) and not self.panel(name).has_focus_within:
            return True
        return self.toggle(name)

    def close_overlay(self) -> bool:
        """Esc on a narrow screen: close the panels opened over the chat. True if they were open."""
        was_open, self.overlay = self.overlay, False
        return was_open

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
