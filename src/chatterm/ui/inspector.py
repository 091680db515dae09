"""The token inspector: the distribution each token was drawn from.

While a reply streams it follows the newest token. For the token shown it draws the top
candidates after the sampling filters as bars with their probabilities, the chosen one marked,
the text just before it, and a confidence strip (the chosen token's probability at every step of
the reply). Afterwards the reply's tokens can be stepped through with Left/Right or [ and ]
(Home/End jump) while the inspector has focus. Tokens the reader never saw (a stop string the
engine held back and cut) are labelled as such.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget

from ..engine.events import TokenStep
from ..session.sanitize import printable

MAX_STEPS = 4096  # per reply; older steps are dropped to bound memory on endless replies
LABEL_WIDTH = 10  # columns for a candidate's text
CONTEXT_TOKENS = 24  # how many earlier tokens the context line draws from
EIGHTHS = " ▏▎▍▌▋▊▉█"  # partial blocks: bars are drawn to 1/8 of a cell
SPARKS = "▁▂▃▄▅▆▇█"


def token_label(text: str, width: int = LABEL_WIDTH) -> str:
    """A token as a short visible label: spaces and newlines shown, controls escaped."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")
    shown = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in shown)
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return shown or "∅"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar `width` cells wide, filled to `fraction` in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


class TokenInspector(Widget, can_focus=True):
    BINDINGS = [
        Binding("left,left_square_bracket", "step(-1)", "Prev token", id="inspector_prev"),
        Binding("right,right_square_bracket", "step(1)", "Next token", id="inspector_next"),
        Binding("home", "jump(0)", "First token", show=False, id="inspector_first"),
        Binding("end", "jump(-1)", "Last token", show=False, id="inspector_last"),
    ]

    selected: reactive[int] = reactive(-1)  # -1 follows the newest token

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[TokenStep] = []
        self.shown_tokens: int | None = None  # after a reply: how many tokens reached the reader
        self.stop_reason = ""
        self.note: str | None = None  # why a finished reply has no steps
        self.border_title = "Token inspector"

    # -- feeding -------------------------------------------------------------------------------

    def reset(self, note: str | None = None) -> None:
        self.steps = []
        self.shown_tokens = None
        self.stop_reason = ""
        self.note = note
        self.selected = -1
        self.border_subtitle = ""
        self.refresh()

    def add_steps(self, steps: list[TokenStep]) -> None:
        self.steps.extend(steps)
        if len(self.steps) > MAX_STEPS:
            del self.steps[: len(self.steps) - MAX_STEPS]
        if self.selected == -1:
            self.refresh()

    def finish(self, shown_tokens: int, stop_reason: str, note: str | None = None) -> None:
        """The reply ended; tokens past `shown_tokens` were held back (a stop string, a cut).
        `note` says why there are no steps (a server that gives no token probabilities)."""
        self.shown_tokens = shown_tokens
        self.stop_reason = stop_reason
        self.note = note
        self.border_subtitle = "←/→ step" if self.steps else ""
        self.refresh()

    def record(self) -> tuple:
        """What it shows of a finished reply, to show again with `restore`."""
        return list(self.steps), self.shown_tokens, self.stop_reason, self.note

    def restore(self, record: tuple) -> None:
        steps, shown_tokens, stop_reason, note = record
        self.reset()
        self.steps = list(steps)
        self.finish(shown_tokens, stop_reason, note)

    # -- stepping ------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        """The step on display."""
        return len(self.steps) - 1 if self.selected == -1 else min(self.selected, len(self.steps) - 1)

    def action_step(self, delta: int) -> None:
        if self.steps:
            self.selected = max(0, min(len(self.steps) - 1, self.index + delta))

    def action_jump(self, where: int) -> None:
        if self.steps:
            self.selected = where if where >= 0 else len(self.steps) - 1

    # -- drawing -------------------------------------------------------------------------------

    def render(self):
        if not self.steps and self.note:
            return Text(printable(self.note), style="italic")
        if not self.steps:
            return Text.assemble(
                ("No tokens yet.\n\n", "bold"),
                ("Send a message: each token's candidates appear here as it is drawn. "
                 "Afterwards, focus this panel (F3) and step with ←/→ or [ ].", "dim"),
            )
        width = max(20, self.content_size.width)
        step = self.steps[self.index]
        return Group(self._header(step, width), self._context_line(width), Text(""),
                     *self._candidates(step, width), Text(""), *self._strip(width))

    def _colours(self) -> tuple[str, str, str]:
        theme = self.app.current_theme
        return theme.accent or "yellow", theme.primary or "blue", theme.warning or "yellow"

    def _hidden(self, index: int) -> bool:
        """True for a token the reader never saw (held back, then cut as part of a stop string)."""
        return self.shown_tokens is not None and index >= self.shown_tokens

    def _header(self, step: TokenStep, width: int) -> Text:
        accent, _, warning = self._colours()
        head = Text.assemble(("token ", "dim"), (f"{self.index + 1}", "bold"), (f"/{len(self.steps)}", "dim"),
                             *((("  id ", "dim"), (str(step.token_id), "")) if step.token_id >= 0 else ()))
        if self.selected == -1 and self.shown_tokens is None:
            tail = Text("● live", style=f"bold {accent}")
        elif self._hidden(self.index):
            tail = Text("cut: stop string" if self.stop_reason == "stop" else "not shown", style=f"italic {warning}")
        else:
            tail = Text("◀ ▶", style="dim")
        gap = max(1, width - head.cell_len - tail.cell_len)
        return Text.assemble(head, " " * gap, tail, no_wrap=True, overflow="ellipsis")

    def _context_line(self, width: int) -> Text:
        """The reply's text up to and including this token, the token highlighted."""
        accent, _, _ = self._colours()
        index = self.index
        before = "".join(s.text for s in self.steps[max(0, index - CONTEXT_TOKENS) : index])
        before = token_label(before, 10_000).replace("␣", " ")
        chosen = token_label(self.steps[index].text, width // 2)
        room = max(0, width - len(chosen) - 1)
        if len(before) > room:
            before = "…" + before[len(before) - room + 1 :]
        return Text.assemble((before, "dim"), (chosen, f"bold reverse {accent}"), no_wrap=True, overflow="crop")

    def _candidates(self, step: TokenStep, width: int) -> list[Text]:
        accent, primary, _ = self._colours()
        bar_width = max(4, width - LABEL_WIDTH - 10)
        rows = []
        listed = False
        for token_id, text, prob in step.candidates:
            chosen = token_id == step.token_id
            listed |= chosen
            rows.append(self._row(text, prob, chosen, bar_width, accent if chosen else primary))
        if not listed:
            rows.append(self._row(step.text, step.prob, True, bar_width, accent))
        return rows

    @staticmethod
    def _row(text: str, prob: float, chosen: bool, bar_width: int, colour: str) -> Text:
        weight = "bold " if chosen else ""
        return Text.assemble(
            ("▶ " if chosen else "  ", f"bold {colour}"),
            (token_label(text).ljust(LABEL_WIDTH), weight.strip()),
            " ",
            (bar(prob, bar_width), f"{weight}{colour}"),
            (f"{prob * 100:6.1f}%", weight.strip() or "dim"),
            no_wrap=True,
            overflow="crop",
        )

    def _strip(self, width: int) -> list[Text]:
        """The chosen token's probability at each step, as a sparkline around the selection."""
        accent, primary, warning = self._colours()
        room = max(8, width - 2)
        index = self.index
        start = max(0, min(index - room // 2, len(self.steps) - room))
        line = Text(no_wrap=True, overflow="crop")
        for i in range(start, min(len(self.steps), start + room)):
            prob = self.steps[i].prob
            spark = SPARKS[min(len(SPARKS) - 1, int(prob * len(SPARKS)))]
            if i == index:
                style = f"bold reverse {accent}"
            elif self._hidden(i):
                style = f"dim {warning}"
            else:
                style = primary
            line.append(spark, style=style)
        return [Text("confidence of each chosen token", style="dim"), line]
