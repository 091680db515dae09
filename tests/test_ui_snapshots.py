"""Snapshots of the main screen (chat, settings panel, live inspector), the inspector stepping
back through a reply, and a narrow terminal.

Timing figures are replaced before the snapshot so it is the same on every run. Update with
`python -m pytest tests/test_ui_snapshots.py --snapshot-update` after an intended change, and
look at the report before committing.
"""

from pathlib import Path

import pytest

from chatterm.session.user.config import AppConfig
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import Note
from helpers import wait_until

pytestmark = pytest.mark.slow

# A saved parrot, not one trained in the run: the inspector's probabilities must be the same
# on every machine (see make_snapshot_parrot.py).
PARROT = Path(__file__).parent / "data" / "snapshot_parrot"


def app_for(checkpoint):
    config = AppConfig()
    config.sampling.update({"temperature": 0, "seed": 1})
    return ChatApp(config, str(checkpoint), [])


async def chat_once(pilot):
    app = pilot.app
    # A blinking cursor is drawn or not depending on when the picture is taken.
    app.query_one("#input").cursor_blink = False
    await app.workers.wait_for_complete()
    await wait_until(pilot, lambda: app.session.backend is not None, what="the model")
    for note in app.chat.query(Note):  # the welcome
        await note.remove()
    app.clear_notifications()  # the load note's toast carries a timing
    app.send("hi")
    await wait_until(pilot, lambda: not app.busy, what="the reply")
    await app.workers.wait_for_complete()
    await pilot.pause()
    app.status.speed = "TTFT 0.05 s · 100.0 tok/s"


def test_main_screen(snap_compare):
    assert snap_compare(app_for(PARROT), terminal_size=(100, 30), run_before=chat_once)


def test_inspector_stepping_back(snap_compare):
    async def run_before(pilot):
        await chat_once(pilot)
        await pilot.press("f2", "f2")  # the first F2 focuses the shown settings, the second hides them
        pilot.app.inspector.focus()
        for _ in range(3):
            await pilot.press("left")
        await pilot.pause()

    assert snap_compare(app_for(PARROT), terminal_size=(100, 30), run_before=run_before)


def test_narrow_terminal(snap_compare):
    assert snap_compare(app_for(PARROT), terminal_size=(60, 20), run_before=chat_once)
