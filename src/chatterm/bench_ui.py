"""The UI section of `chatterm bench`: does the app show tokens as fast as the engine makes them?

Both sides run the same `ChatSession` work (same model, messages, greedy settings, 8 inspector
candidates per token, autosave to a scratch folder) in one process; the only difference is the
app around it. Tokens/s is end to end: new tokens over the time from the message being sent to
the reply being complete (on screen, for the app), summed over the messages after a warm-up one.

Two models:
- chat: the default model answering real messages. Its replies are short (15-60 tokens at
  ~1,000 tokens/s), so the app's fixed per-message costs (mounting two message widgets, the
  last Markdown render) weigh as much as the streaming itself.
- stream: the same shape and tokenizer with random weights, which never writes the `User:`
  marker, so every reply runs to max_new_tokens: the sustained streaming rate.

First frame: `python -m chatterm` started on a pseudo-terminal, timed from the spawn to the first
full screen it writes (its prompt's placeholder). Nothing is faked: the real CLI, config and
default model; torch is imported and the model loaded after that frame.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_FRAME_MARKER = b"Enter sends"  # in the prompt's border: drawn with the first frame

CHAT_MESSAGES = [
    "hi, how are you?",
    "what do you like to do on weekends?",
    "do you have any pets?",
    "what did you have for dinner?",
    "tell me about your favourite movie",
    "where did you grow up?",
]
MAX_NEW_TOKENS = 256


def ui_vs_engine(checkpoint: str | None, runs: int = 3) -> None:
    from .engine import torch_thread
    from .session.user.folders import default_checkpoint

    path = checkpoint or str(default_checkpoint())
    saved_env = {k: os.environ.get(k) for k in ("CHATTERM_CONFIG_DIR", "CHATTERM_DATA_DIR")}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CHATTERM_CONFIG_DIR"] = str(Path(scratch) / "config")  # never the user's files
        os.environ["CHATTERM_DATA_DIR"] = str(Path(scratch) / "data")
        try:
            twin = torch_thread.call(_random_twin, path, Path(scratch) / "random")
            for label, model, messages in (
                ("chat", path, CHAT_MESSAGES),
                ("stream", twin, ["tell me everything"] * (runs + 1)),
            ):
                engine = _engine_rate(model, messages, Path(scratch) / "engine")
                app = asyncio.run(_app_rate(model, messages))
                print(f"[ui] {label}: engine alone {engine[0]:7.1f} tok/s, app {app[0]:7.1f} tok/s -> {app[0] / engine[0]:.0%}"
                      f" ({engine[1]} tokens in {len(messages) - 1} replies)")
            print(f"[ui] first frame of `python -m chatterm`: {first_frame_seconds(runs):.2f} s after launch "
                  "(median; the model loads after it)")
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def first_frame_seconds(runs: int = 3) -> float:
    """Median seconds from spawning `python -m chatterm` on a 100x30 pseudo-terminal to its
    first frame."""
    times = sorted(_first_frame_once() for _ in range(runs))
    return times[len(times) // 2]


def _first_frame_once(timeout: float = 20.0) -> float:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "chatterm"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while time.perf_counter() - started < timeout:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the app exited
                    break
                if FIRST_FRAME_MARKER in seen:
                    return time.perf_counter() - started
        raise RuntimeError(f"no first frame within {timeout:.0f} s; last output: {seen[-200:]!r}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)


def _settings():
    from .engine.settings import SamplingSettings

    return SamplingSettings(temperature=0, max_new_tokens=MAX_NEW_TOKENS)


def _random_twin(path: str, folder: Path) -> str:
    """The checkpoint at `path` with its weights re-drawn at random (same shape and tokenizer)."""
    from .model import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    meta = {**ckpt.meta, "name": f"{ckpt.name}-random"}
    return str(save_checkpoint(folder, ckpt.model.init_weights(seed=0), meta))


def _engine_rate(path: str, messages: list[str], scratch: Path) -> tuple[float, int]:
    from .engine.events import run_to_end
    from .session.backends.factory import open_backend
    from .session.chat import ChatSession
    from .session.chats.persistence import ConversationStore
    from .ui.app import INSPECT_TOP

    session = ChatSession(open_backend(path), _settings(), store=ConversationStore(scratch))
    tokens, seconds = 0, 0.0
    for i, message in enumerate(messages):
        session.clear()
        t0 = time.perf_counter()
        done = run_to_end(session.send(message, inspect=INSPECT_TOP))
        if i:  # the first is a warm-up
            seconds += time.perf_counter() - t0
            tokens += done.new_tokens
    session.close()
    return tokens / seconds, tokens


async def _app_rate(path: str, messages: list[str]) -> tuple[float, int]:
    from .session.user.config import AppConfig
    from .ui.app import ChatApp
    from .ui.prompt_input import PromptInput

    config = AppConfig()
    config.sampling = _settings().to_dict()
    app = ChatApp(config, path, [])
    tokens, seconds = 0, 0.0
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        prompt = app.query_one(PromptInput)
        for i, message in enumerate(messages):
            await app.action_clear()
            prompt.text = message
            await pilot.pause()
            t0 = time.perf_counter()
            await pilot.press("enter")
            await app.workers.wait_for_complete()  # awaits the reply's worker without polling
            await pilot.pause()  # the last batch and ReplyFinished are handled: the final text is on screen
            if i:
                seconds += time.perf_counter() - t0
                tokens += len(app.inspector.steps)  # one step per generated token
    return tokens / seconds, tokens
