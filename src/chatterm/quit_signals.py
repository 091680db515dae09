"""SIGTERM and SIGHUP end a chat as its quit command would, in the TUI and the plain REPL alike:
the reply in flight stops within a token (it is kept, marked "stopped" and saved by its worker,
which the interpreter joins before exiting), then the front end ends its own way, with exit code
128 + the signal's number (the TUI through its event loop, so that Textual restores the terminal
instead of dying mid-screen)."""

from __future__ import annotations

import signal
from typing import Callable

QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def quit_on_signals(session, end: Callable[[int], None]) -> dict:
    """On SIGTERM or SIGHUP: stop `session`'s reply, then `end(signum)`. Returns the handlers it
    replaced, by signal, for the caller to put back."""

    def handler(signum, frame):
        session.stop()  # nothing in flight: harmless (the next send clears it)
        end(signum)

    return {sig: signal.signal(sig, handler) for sig in QUIT_SIGNALS}
