"""Cut a text stream at the first stop string, never showing any part of one.

Text arrives in pieces (one token's worth at a time) and a stop string such as "User:" may be
split over several of them. The matcher releases only text that cannot be the start of a stop
string; a tail that could still grow into one is held back until the next piece decides it.
If the stream ends without a stop, the held-back tail is released by `flush`.

The set of stop strings can change mid-stream (`set_stops`, e.g. the user edits them while a
reply streams): the held-back text is kept and judged against the new set with the next piece.
Text already released stays released.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops) -> None:
        self.stops: list[str] = []
        self.set_stops(stops)
        self._pending = ""  # text seen but not yet released
        self.stopped_at: str | None = None  # the stop string that ended the stream

    def set_stops(self, stops) -> None:
        """Use a new set of stop strings from the next piece on (held-back text is kept)."""
        self.stops = [s for s in dict.fromkeys(stops) if s]  # de-duplicated, order kept

    def feed(self, text: str) -> tuple[str, bool]:
        """Add a piece of text; return (text safe to show now, whether a stop string was found)."""
        if self.stopped_at is not None:
            return "", True
        buf = self._pending + text
        first = None
        for stop in self.stops:
            at = buf.find(stop)
            if at != -1 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._pending = ""
            self.stopped_at = first[1]
            return buf[: first[0]], True
        hold = self._longest_partial_stop(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """Release the held-back tail at the end of a stream that did not stop."""
        text, self._pending = self._pending, ""
        return text

    @property
    def held(self) -> str:
        return self._pending

    def _longest_partial_stop(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
