"""What the Pilot tests of the TUI share: the app on a checkpoint with greedy sampling, waiting
for the model and for a reply (by polling, never by fixed pauses), typing, the chat's notes."""

from chatterm.session.user.config import AppConfig
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import Note
from helpers import wait_until


def make_app(checkpoint, keys=None, **sampling):
    config = AppConfig()
    config.sampling.update({"temperature": 0, **sampling})
    config.keys.update(keys or {})
    return ChatApp(config, str(checkpoint), [])


async def ready(app, pilot):
    """The model is loaded and its loading worker has ended."""
    await wait_until(pilot, lambda: app.session.backend is not None and not app.model_loading, what="the model")
    await app.workers.wait_for_complete()
    await pilot.pause()


async def type_keys(pilot, text):
    for ch in text:
        await pilot.press("space" if ch == " " else ch)


async def settle(app, pilot):
    """The reply in flight has ended and its worker with it."""
    await wait_until(pilot, lambda: not app.busy, what="the reply to finish")
    await app.workers.wait_for_complete()
    await pilot.pause()


def notes(app):
    """What the chat's transcript shows as notes (errors, /help, /settings, ...)."""
    return [str(n.render()) for n in app.chat.query(Note)]


def passing_notes(app):
    """The passing notes (the status bar's and the toasts', front_end.py), newest last."""
    return list(app.recent_notes)
