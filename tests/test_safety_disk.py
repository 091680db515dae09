"""A full or read-only disk: autosave failing is a warning, the app keeps running, nothing is lost
from memory, and the next save retries. Every failure here is a real one the kernel reports."""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession, ConversationStore, read_conversation
from chatterm.session.user.config import AppConfig
from chatterm.session.backends.local import LocalBackend

SRC = str(Path(__file__).parent.parent / "src")
GREEDY = dict(temperature=0, max_new_tokens=24)


def test_autosave_into_a_path_that_cannot_be_a_folder_warns_then_retries(tmp_path, parrot_checkpoint):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")  # mkdir fails: ENOTDIR / EEXIST
    warnings = []
    session = ChatSession(LocalBackend.load(parrot_checkpoint), SamplingSettings(**GREEDY),
                          store=ConversationStore(blocker / "conversations"), warn=warnings.append)
    done = list(session.send("hi"))[-1]
    assert done.text.strip() == "hello there, friend"
    assert [t.text for t in session.conversation.turns] == ["hi", "hello there, friend"]
    assert len(warnings) == 1 and warnings[0].startswith("autosave failed: ") and "kept in memory" in warnings[0]
    list(session.send("how are you?"))
    assert len(warnings) == 1  # the same failure is not repeated every save
    blocker.unlink()
    list(session.send("what is your name?"))
    assert warnings[-1].startswith("autosave works again")
    saved = read_conversation(session.store.path_for(session.conversation))
    assert [t.text for t in saved.turns] == [t.text for t in session.conversation.turns] and len(saved.turns) == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_autosave_into_a_read_only_folder_warns(tmp_path, parrot_checkpoint):
    folder = tmp_path / "conversations"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        warnings = []
        session = ChatSession(LocalBackend.load(parrot_checkpoint), SamplingSettings(**GREEDY),
                              store=ConversationStore(folder), warn=warnings.append)
        assert list(session.send("hi"))[-1].text.strip() == "hello there, friend"
        assert len(warnings) == 1 and "Permission denied" in warnings[0]
    finally:
        folder.chmod(0o700)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))  # a "disk" that fills after a few turns


@pytest.mark.slow
def test_plain_chat_on_a_full_disk_keeps_chatting_and_warns_on_stderr(tmp_path, parrot_checkpoint):
    """RLIMIT_FSIZE makes every write past 400 bytes fail with EFBIG, as a full disk fails with
    ENOSPC: the real write path, the real error."""
    env = {**os.environ, "PYTHONPATH": SRC, "CHATTERM_DATA_DIR": str(tmp_path / "data"),
           "CHATTERM_CONFIG_DIR": str(tmp_path / "config")}
    messages = "hi\nhow are you?\nwhat is your name?\nhi\nhow are you?\n"
    r = subprocess.run([sys.executable, "-m", "chatterm", str(parrot_checkpoint), "--plain", "--save", "--temperature", "0"],
                       input=messages, capture_output=True, text=True, env=env, timeout=120,
                       preexec_fn=_limit_file_size)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.count("hello there, friend") == 2 and r.stdout.count("very well, thank you") == 2
    warnings = [line for line in r.stderr.splitlines() if "autosave failed" in line]
    assert len(warnings) == 1 and "File too large" in warnings[0] and warnings[0].startswith("chatterm: warning: ")
    saved = list((tmp_path / "data" / "conversations").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["turns"]  # the last save that fitted
    assert not list((tmp_path / "data" / "conversations").glob(".*.tmp"))


async def test_the_tui_shows_an_autosave_failure_and_keeps_the_reply(tmp_path, parrot_checkpoint, monkeypatch):
    from chatterm.ui.app import ChatApp
    from chatterm.ui.prompt_input import PromptInput
    from helpers import wait_until

    (tmp_path / "blocked").write_text("not a folder")
    monkeypatch.setenv("CHATTERM_DATA_DIR", str(tmp_path / "blocked"))
    config = AppConfig()
    config.sampling.update(GREEDY)
    app = ChatApp(config, str(parrot_checkpoint), [])
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.click(PromptInput)
        await pilot.press("h", "i", "enter")
        await wait_until(pilot, lambda: len(app.session.conversation.turns) == 2 and list(app._notifications),
                         what="the reply and the autosave warning")
        messages = [n.message for n in app._notifications]
        assert any(m.startswith("autosave failed: ") for m in messages), messages
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        # The notification fades; the status bar keeps saying so until saving works again.
        await wait_until(pilot, lambda: "not saved" in str(app.status.render()), what="the unsaved mark")
        (tmp_path / "blocked").unlink()  # the disk is usable again
        await pilot.press("h", "o", "w", "space", "a", "r", "e", "space", "y", "o", "u", "?", "enter")
        await wait_until(pilot, lambda: len(app.session.conversation.turns) == 4, what="the second reply")
        assert app.session.conversation.turns[-1].text == "very well, thank you"  # still running
        await wait_until(pilot, lambda: "not saved" not in str(app.status.render()), what="the mark to go")
        assert any(n.message.startswith("autosave works again") for n in app._notifications)


def _can_mount_privately() -> bool:
    """Whether `unshare -rm` gives this process a private mount namespace (user namespaces on)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_privately(), reason="needs unshare -rm (user and mount namespaces)")
def test_plain_chat_on_a_read_only_file_system_keeps_chatting_and_warns(tmp_path, parrot_checkpoint):
    """The conversations folder on a read-only mount (EROFS; root cannot write there either): a
    private bind mount made read-only, visible only to the chatterm under test."""
    folder = tmp_path / "data" / "conversations"
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": SRC, "CHATTERM_DATA_DIR": str(tmp_path / "data"),
           "CHATTERM_CONFIG_DIR": str(tmp_path / "config")}
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    command = [sys.executable, "-m", "chatterm", str(parrot_checkpoint), "--plain", "--save", "--temperature", "0"]
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(folder), *command],
                       input="hi\nhow are you?\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.split() == "hello there, friend very well, thank you".split()
    warnings = [line for line in r.stderr.splitlines() if "autosave failed" in line]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0], r.stderr
    assert list(folder.iterdir()) == []
