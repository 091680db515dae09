"""Widgets on their own, each in a small host app: no model, no worker threads."""

from textual.app import App, ComposeResult
from textual.widgets import Input, Label

from chatterm.engine.settings import SPECS
from chatterm.session.user.layered_settings import LayeredSettings
from chatterm.ui.settings_panel import SettingsPanel
from chatterm.ui.side_panel import SidePanel
from helpers import wait_until


class Host(App):
    CSS_PATH = "../src/chatterm/ui/app.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (90, "-wide")]

    def __init__(self, widget) -> None:
        super().__init__()
        self.widget = widget
        self.messages = []

    def compose(self) -> ComposeResult:
        yield self.widget

    def on_settings_panel_changed(self, message) -> None:
        self.messages.append(message.name)

    def on_settings_panel_save_defaults(self, message) -> None:
        self.messages.append("save")


async def test_settings_panel_rows_come_from_specs_and_changes_go_to_the_session():
    layers = LayeredSettings()
    layers.set_layer("model", {"top_k": 40})
    app = Host(SettingsPanel(layers, id="settings"))
    async with app.run_test(size=(60, 30)) as pilot:
        labels = [str(label.render()) for label in app.query(".setting-label").results(Label)]
        assert labels == [spec.label for spec in SPECS.values()]
        top_k = app.query_one("#set-top_k", Input)
        assert top_k.value == "40" and "now 40 (model)" in str(top_k.tooltip)
        assert app.messages == [] and layers.layers["session"] == {}  # filling the fields set nothing
        top_k.value = "7"
        await wait_until(pilot, lambda: app.messages == ["top_k"])
        assert layers.live.top_k == 7 and "now 7 (session)" in str(top_k.tooltip)
        top_k.value = "-1"
        error = app.query_one("#err-top_k")
        await wait_until(pilot, lambda: error.display)
        assert layers.live.top_k == 7 and top_k.has_class("-invalid")
        top_k.focus()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "save" in app.messages)


async def test_side_panel_toggles_its_panels_and_opens_over_the_chat_when_narrow():
    app = Host(SidePanel(LayeredSettings(), id="side"))
    async with app.run_test(size=(100, 30)) as pilot:
        side, settings, inspector = app.widget, app.query_one("#settings"), app.query_one("#inspector")
        assert side.toggle("settings") is False and not settings.display and inspector.display
        assert side.toggle("inspector") is False
        await wait_until(pilot, lambda: side.has_class("-collapsed") and not side.region.width)
        assert side.toggle("inspector") is True and not side.has_class("-collapsed")
        await pilot.resize_terminal(60, 20)
        await wait_until(pilot, lambda: app.screen.has_class("-narrow") and not side.region.width)
        assert side.toggle("settings") is True and side.overlay and settings.display
        await wait_until(pilot, lambda: side.region.width == 42)  # 42 of 60 columns: the rest stays in view
        assert side.toggle("settings") is False and not side.overlay
        await wait_until(pilot, lambda: not side.region.width)
