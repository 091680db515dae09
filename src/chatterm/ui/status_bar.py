"""The status bar: model, device and dtype, a context meter, and the last reply's speed."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

METER = 10


class StatusBar(Widget):
    model: reactive[str] = reactive("loading model…")
    device: reactive[str] = reactive("")
    context: reactive[tuple[int, int]] = reactive((0, 0))  # (used, window)
    speed: reactive[str] = reactive("")  # "TTFT 0.12 s · 41.3 tok/s"
    note: reactive[str] = reactive("")  # "dropped 2 old turns", "generating…"

    def render(self) -> Text:
        used, window = self.context
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f" {self.model}", style="bold")
        if self.device:
            out.append(f"  {self.device}", style="dim")
        if window:
            filled = min(METER, round(METER * used / window))
            out.append("  ctx ")
            out.append("▰" * filled, style="bold" if used < 0.9 * window else "bold red")
            out.append("▱" * (METER - filled), style="dim")
            out.append(f" {used}/{window}")
        if self.speed:
            out.append(f"  {self.speed}")
        if self.note:
            out.append(f"  {self.note}", style="italic")
        return out
