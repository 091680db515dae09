"""The token inspector: the distribution each token was drawn from.

While a reply streams it follows the newest token: the top candidates after the sampling
filters, as bars with their probabilities, the chosen one marked. Afterwards the reply's tokens
can be stepped through (Left/Right or [ ], Home/End) to see each step's distribution.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget

from ..engine.events import TokenStep

MAX_STEPS = 4096  # per reply; older steps are dropped to bound memory on endless replies
BAR_WIDTH = 12


def token_label(text: str) -> str:
    """A token as a short visible label: spaces and newlines shown, controls escaped."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")
    shown = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in shown)
    return shown[:12] or "∅"


class TokenInspector(Widget, can_focus=True):
    BINDINGS = [
        Binding("left,left_square_bracket", "step(-1)", "Prev token", id="inspector_prev"),
        Binding("right,right_square_bracket", "step(1)", "Next token", id="inspector_next"),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    selected: reactive[int] = reactive(-1)  # -1 follows the newest token

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[TokenStep] = []
        self.border_title = "Token inspector"

    def reset(self) -> None:
        self.steps = []
        self.selected = -1
        self.refresh()

    def add_steps(self, steps: list[TokenStep]) -> None:
        self.steps.extend(steps)
        if len(self.steps) > MAX_STEPS:
            del self.steps[: len(self.steps) - MAX_STEPS]
        if self.selected == -1:
            self.refresh()

    def action_step(self, delta: int) -> None:
        if not self.steps:
            return
        current = len(self.steps) - 1 if self.selected == -1 else self.selected
        self.selected = max(0, min(len(self.steps) - 1, current + delta))

    def action_jump(self, where: int) -> None:
        if self.steps:
            self.selected = where if where >= 0 else len(self.steps) - 1

    def render(self):
        if not self.steps:
            return Text("No tokens yet. Send a message; each token's\ncandidates appear here.", style="dim")
        theme = self.app.current_theme
        accent, primary = theme.accent or "yellow", theme.primary
        index = len(self.steps) - 1 if self.selected == -1 else self.selected
        step = self.steps[index]
        table = Table.grid(padding=(0, 1))
        table.add_column(width=2)
        table.add_column(min_width=6, max_width=12)
        table.add_column(width=BAR_WIDTH)
        table.add_column(justify="right", width=6)
        for token_id, text, prob in step.candidates:
            chosen = token_id == step.token_id
            filled = round(prob * BAR_WIDTH)
            bar = Text("█" * filled, style=f"bold {accent}" if chosen else primary)
            bar.append("░" * (BAR_WIDTH - filled), style="dim")
            table.add_row(
                Text("▶" if chosen else " ", style="bold"),
                Text(token_label(text), style="bold" if chosen else ""),
                bar,
                Text(f"{prob * 100:5.1f}%"),
            )
        if step.token_id not in {c[0] for c in step.candidates}:
            table.add_row(Text("▶"), Text(token_label(step.text)), Text("(outside the top list)", style="dim"),
                          Text(f"{step.prob * 100:5.1f}%"))
        follow = "live" if self.selected == -1 else "←/→ step"
        header = Text.assemble((f"token {index + 1}/{len(self.steps)} ", "bold"), ("chosen ", "dim"),
                               (token_label(step.text), "bold"), (f" · {follow}", "dim"))
        grid = Table.grid()
        grid.add_row(header)
        grid.add_row(table)
        return grid
