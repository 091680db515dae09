"""The thread count a CPU decode runs with, picked by measuring while it decodes.

Why: a decode step's kernels split every matrix over all threads and meet at a barrier after
each one, hundreds of times a token. When another process keeps a core busy (a browser, a
build: a laptop's ordinary day), the thread that shares its core arrives late at every barrier
and the others wait for it: measured on a 2-core machine with one core busy, SmolLM2 decoded at
3.9 tok/s with 2 threads and 13.0 with 1 (llama.cpp: 23 and 73). Which count is faster changes
with the load, so it is measured, not guessed: every `PERIOD` steps the tuner runs `PROBE` steps
with one thread fewer (or, when it is already below the maximum, one more) and keeps whichever
gave the shorter median step. A probe of a worse count costs a few slow steps, so after each
probe that changes nothing the wait before the next one doubles, up to about `MAX_WAIT_S` of
decoding (measured, SmolLM2 Q8_0 on 2 quiet cores: a probe every 64 steps cost 1-2% of the
decode speed); a step clearly slower than the best seen at this count (the load changed) probes
at once, and a probe that changes the count starts the waits over.
"""

from __future__ import annotations

import statistics

PERIOD = 64  # decode steps before the first probe, and after a probe that changed the count
PROBE = 4  # steps timed for each side of a comparison
MARGIN = 0.93  # a probe must be this much faster (median step time) to be adopted
MAX_WAIT_S = 4.0  # the longest wait between probes, in decoding time (never under PERIOD steps)
SLOWDOWN = 1.3  # a median step this much slower than the best seen at this count probes now


class ThreadTuner:
    """Call `threads()` before a decode step for the count to use, and `record(seconds)` after
    it. `maximum`: the most threads to use (torch's setting when the tuner was made)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.current = self.maximum
        self._recent: list[float] = []  # the last PROBE steps at `current`
        self._probe: int | None = None  # the count being tried, when a probe runs
        self._probe_times: list[float] = []
        self._steps = 0
        self._period = PERIOD  # steps until the next probe
        self._best = float("inf")  # the best median step seen at `current` since it was chosen
        self._go_down = True  # which side the next probe tries

    def threads(self) -> int:
        return self._probe if self._probe is not None else self.current

    def record(self, seconds: float) -> None:
        if self._probe is not None:
            self._probe_times.append(seconds)
            if len(self._probe_times) >= PROBE:
                probed, ours = statistics.median(self._probe_times), statistics.median(self._recent)
                if probed < MARGIN * ours:
                    self.current, self._recent = self._probe, list(self._probe_times)
                    self._period, self._best = PERIOD, probed
                else:  # wait longer for the next probe; today's speed is the one to compare with
                    longest = max(PERIOD, int(MAX_WAIT_S / max(ours, 1e-6)))
                    self._period, self._best = min(2 * self._period, longest), ours
                self._probe, self._probe_times = None, []
            return
        self._recent = (self._recent + [seconds])[-PROBE:]
        self._steps += 1
        if len(self._recent) < PROBE:
            return
        median = statistics.median(self._recent)
        self._best = min(self._best, median)
        if self._steps >= self._period or (median > SLOWDOWN * self._best and self._steps >= PROBE):
            self._steps = 0
            self._probe = self._next_probe()

    def _next_probe(self) -> int | None:
        down, up = self.current - 1, self.current + 1
        candidates = [c for c in ((down, up) if self._go_down else (up, down)) if 1 <= c <= self.maximum]
        self._go_down = not self._go_down
        return candidates[0] if candidates else None
