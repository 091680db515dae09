"""The status bar: model, device and dtype, a context meter, the last reply's speed, and a
spinner while the model loads or a reply streams.

Every string shown here may come from a checkpoint file (the model's name), so it is drawn as
plain text with control characters removed.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ..session.sanitize import printable

METER = 10  # cells in the context meter
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusBar(Widget):
    model: reactive[str] = reactive("no model")
    device: reactive[str] = reactive("")  # "cpu fp32"
    context: reactive[tuple[int, int]] = reactive((0, 0))  # (used, window)
    context_is_estimate: reactive[bool] = reactive(False)  # a server that cannot count tokens: "~"
    speed: reactive[str] = reactive("")  # "TTFT 0.12 s · 41.3 tok/s"
    note: reactive[str] = reactive("")  # "dropped 2 old turns to fit", an error
    busy: reactive[str] = reactive("")  # "loading model", "generating": shows a spinner
    _frame: reactive[int] = reactive(0)

    def on_mount(self) -> None:
        self._spin = self.set_interval(0.1, self._tick, pause=not self.busy)

    def watch_busy(self, busy: str) -> None:
        if hasattr(self, "_spin"):
            (self._spin.resume if busy else self._spin.pause)()

    def _tick(self) -> None:
        self._frame = (self._frame + 1) % len(SPINNER)

    def render(self) -> Text:
        used, window = self.context
        out = Text(no_wrap=True, overflow="ellipsis")
        if self.busy:
            accent = self.app.current_theme.accent or "yellow"
            out.append(f" {SPINNER[self._frame]} {self.busy} ", style=f"bold {accent}")
        out.append(f" {printable(self.model)}", style="bold")
        if self.device:
            out.append(f"  {self.device}", style="dim")
        if window:
            filled = min(METER, round(METER * used / window))
            out.append("  ctx ", style="dim")
            out.append("▰" * filled, style="bold" if used < 0.9 * window else "bold red")
            out.append("▱" * (METER - filled), style="dim")
            out.append(f" {'~' if self.context_is_estimate else ''}{used}/{window}")
        if self.speed:
            out.append(f"  {self.speed}")
        if self.note:
            out.append(f"  {printable(self.note)}", style="italic")
        return out
