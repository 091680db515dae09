"""The status bar: model, device and dtype, a context meter, the reply's speed (live while it
streams), a short note, "not saved" while autosave fails, and a spinner while the model loads or
a reply streams.

The bar is one line. When it is too narrow, the least useful parts go first (device, then the
speed) so that the spinner, the model, the context meter and the note stay. Notes are kept short
(`NOTE_CELLS`); the app puts a longer one in the chat in full (`TuiFrontEnd.status_note`).

Every string shown here may come from a checkpoint file (the model's name), so it is drawn as
plain text with control characters removed.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ..session.sanitize import printable

METER = 10  # cells in the context meter
NOTE_CELLS = 36  # the longest note the bar shows; longer ones are also written to the chat
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusBar(Widget):
    model: reactive[str] = reactive("no model")
    device: reactive[str] = reactive("")  # "cpu fp32"
    context: reactive[tuple[int, int]] = reactive((0, 0))  # (used, window)
    context_is_estimate: reactive[bool] = reactive(False)  # a server that cannot count tokens: "~"
    speed: reactive[str] = reactive("")  # "TTFT 0.12 s · 41.3 tok/s"
    note: reactive[str] = reactive("")  # "dropped 2 old turns to fit", an error
    busy: reactive[str] = reactive("")  # "loading model", "generating": shows a spinner
    unsaved: reactive[bool] = reactive(False)  # autosave is failing: said until it works again
    _frame: reactive[int] = reactive(0)

    def on_mount(self) -> None:
        self._spin = self.set_interval(0.1, self._tick, pause=not self.busy)

    def watch_busy(self, busy: str) -> None:
        if hasattr(self, "_spin"):
            (self._spin.resume if busy else self._spin.pause)()

    def _tick(self) -> None:
        self._frame = (self._frame + 1) % len(SPINNER)

    def render(self) -> Text:
        parts = self._parts()
        width = self.size.width or 10_000
        # Drop the least useful parts until the line fits (priority: lower goes first).
        while sum(text.cell_len for _, _, text in parts) > width and any(p < 9 for p, _, _ in parts):
            parts.remove(min((p for p in parts if p[0] < 9), key=lambda p: p[0]))
        out = Text(no_wrap=True, overflow="ellipsis")
        for _, _, text in sorted(parts, key=lambda p: p[1]):
            out.append_text(text)
        return out

    def _parts(self) -> list[tuple[int, int, Text]]:
        """(priority, position, text) of each part of the line."""
        used, window = self.context
        parts = []
        if self.busy:
            accent = self.app.current_theme.accent or "yellow"
            parts.append((9, 0, Text(f" {SPINNER[self._frame]} {self.busy} ", style=f"bold {accent}")))
        parts.append((9, 1, Text(f" {printable(self.model)}", style="bold")))
        if self.device:
            parts.append((1, 2, Text(f"  {self.device}", style="dim")))
        if window:
            meter = Text("  ctx ", style="dim")
            filled = min(METER, round(METER * used / window))
            meter.append("▰" * filled, style="bold" if used < 0.9 * window else "bold red")
            meter.append("▱" * (METER - filled), style="dim")
            meter.append(f" {'~' if self.context_is_estimate else ''}{used}/{window}")
            parts.append((8, 3, meter))
        if self.speed:
            parts.append((2, 4, Text(f"  {self.speed}")))
        if self.note:
            note = printable(self.note)
            note = note if len(note) <= NOTE_CELLS else note[: NOTE_CELLS - 1] + "…"
            parts.append((7, 5, Text(f"  {note}", style="italic")))
        if self.unsaved:  # a notification fades; the chat must not look saved while it is not
            parts.append((9, 6, Text("  ⚠ not saved", style="bold red")))
        return parts
