"""Resuming chats: the store's list, /load N|ID|PATH, /chats rename and delete (never a chat another
chatterm has open, never a file outside the store), `chatterm -c`, the TUI's chats screen, and the
input history kept across launches."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatterm.repl import PlainChat
from chatterm.session import ChatSession, Conversation, ConversationStore
from chatterm.session.user.config import AppConfig
from chatterm.session.user.input_history import InputHistory
from chatterm.session.user.layered_settings import LayeredSettings
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import UserMessage
from chatterm.ui.prompt_input import PromptInput
from helpers import wait_until

SRC = str(Path(__file__).parent.parent / "src")

PARROT = Path(__file__).parent / "data" / "snapshot_parrot"  # saved: no training in this file


def data_dir() -> Path:
    return Path(os.environ["CHATTERM_DATA_DIR"])  # a temp folder per test (conftest)


def saved_chat(store: ConversationStore, first: str, *, model: str = "parrot", age: float = 0.0) -> Conversation:
    """A chat saved in the store, its file dated `age` seconds ago."""
    conversation = Conversation()
    conversation.add("user", first)
    conversation.add("assistant", "a reply")
    conversation.model = model
    path = store.save(conversation)
    store.close()
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return conversation


def make_repl(store: ConversationStore, backend=None):
    layers = LayeredSettings()
    layers.set_layer("config", {"temperature": 0})
    session = ChatSession(backend, layers.live, Conversation(), store)
    out, err = io.StringIO(), io.StringIO()
    return PlainChat(session, settings=layers, config=AppConfig(), out=out, err=err), out, err


# -- the store ---------------------------------------------------------------------------------


def test_the_list_is_newest_first_with_inert_one_line_titles_and_the_model(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    old = saved_chat(store, "the old one", age=3600)
    hostile = saved_chat(store, "evil\x1b]0;title\x07 line one\nline two " + "x" * 200, model="m\x1b[31m", age=60)
    new = saved_chat(store, "the newest", age=0)
    (store.folder / "20990101-000000-deadbeef.json").write_text("{ not json")  # unreadable: left out and alone
    chats = store.list_chats()
    assert [c.id for c in chats] == [new.id, hostile.id, old.id]
    shown = chats[1]
    assert "\x1b" not in shown.title and "\n" not in shown.title and len(shown.title) <= 61
    assert shown.title.startswith("evil line one line two") and shown.model == "m"
    assert chats[0].model == "parrot" and chats[0].turns == 2
    assert (store.folder / "20990101-000000-deadbeef.json").read_text() == "{ not json"


def test_load_by_number_id_and_path_never_changes_the_file(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    first = saved_chat(store, "first chat", age=100)
    second = saved_chat(store, "second chat")
    elsewhere = tmp_path / "mine.json"
    elsewhere.write_text(json.dumps({"id": "x-1", "system": "", "turns": [{"role": "user", "text": "from a file"}]}))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*store.folder.glob("*.json"), elsewhere]}
    repl, out, err = make_repl(store)
    repl.run(["/chats\n", "/load 2\n"])
    assert repl.session.conversation.turns[0].text == "first chat"
    listed = err.getvalue()
    assert listed.index("second chat") < listed.index("first chat") and "/load N" in listed
    repl.run([f"/load {second.id}\n"])
    assert repl.session.conversation.id == second.id and repl.session.conversation.turns[0].text == "second chat"
    repl.run([f"/load {elsewhere}\n", "/load 9\n", "/load no-such-chat\n"])
    assert repl.session.conversation.turns[0].text == "from a file"
    assert "no chat number 9" in err.getvalue() and "no-such-chat: no such file" in err.getvalue()
    assert before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}
    assert first.id != second.id


def test_rename_and_delete_in_the_repl(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    keep = saved_chat(store, "keep me", age=100)
    drop = saved_chat(store, "drop me")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(Conversation(turns=[]).to_dict()))
    repl, out, err = make_repl(store)
    repl.run(["/chats\n", "/chats rename 2 My \x1b[31mtitle\n", f"/chats delete {drop.id}\n",
              f"/chats delete {outside}\n"])
    chats = store.list_chats()
    assert [(c.id, c.title) for c in chats] == [(keep.id, "My title")]
    assert not (store.folder / f"{drop.id}.json").exists()
    assert outside.exists() and "not a saved chat" in err.getvalue()


def test_a_chat_open_in_another_chatterm_is_neither_deleted_nor_renamed(tmp_path):
    folder = tmp_path / "conversations"
    store = ConversationStore(folder)
    held = saved_chat(store, "open elsewhere")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from chatterm.session.chats.conversation_lock import ConversationLock as L; "
         f"l = L(sys.argv[1]); l.acquire({held.id!r}); print('holding', flush=True); sys.stdin.read()",
         str(folder / ".locks")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert holder.stdout.readline().strip() == "holding"
        repl, out, err = make_repl(ConversationStore(folder))
        repl.run([f"/chats delete {held.id}\n", f"/chats rename {held.id} new name\n"])
        said = err.getvalue().splitlines()
        assert len(said) == 2 and all(f"open in another chatterm (pid {holder.pid})" in line for line in said)
        assert (folder / f"{held.id}.json").exists() and ConversationStore(folder).list_chats()[0].title == "open elsewhere"
    finally:
        holder.communicate("", timeout=30)
    repl.run([f"/chats delete {held.id}\n"])  # once that chatterm has quit, it can go
    assert not (folder / f"{held.id}.json").exists()


def test_a_locks_folder_symlinked_elsewhere_never_loses_another_programs_lock_files(tmp_path):
    """`conversations/.locks` pointing at another program's folder: its `*.lock` files used to be
    taken for unused locks of ours and deleted."""
    theirs = tmp_path / "other-program"
    theirs.mkdir()
    for name, content in (("db.lock", "4242"), ("0123456789abcdef.lock", "")):
        (theirs / name).write_text(content)
    folder = tmp_path / "conversations"
    folder.mkdir()
    (folder / ".locks").symlink_to(theirs)
    store = ConversationStore(folder)  # cleans unused locks at start
    chat = saved_chat(store, "hello")
    store.close()
    ConversationStore(folder).close()  # and again, now that chatterm has locked and released one
    assert sorted(p.name for p in theirs.iterdir()) == ["0123456789abcdef.lock", "db.lock"]
    assert (theirs / "db.lock").read_text() == "4242"
    assert (folder / ".locks").is_dir() and not (folder / ".locks").is_symlink()  # our own folder now
    assert [c.id for c in ConversationStore(folder).list_chats()] == [chat.id]


def test_a_lock_file_symlinked_elsewhere_is_replaced_not_written_through(tmp_path):
    from chatterm.session.chats.conversation_lock import ConversationLock

    outside = tmp_path / "precious.txt"
    outside.write_text("not chatterm's")
    locks = tmp_path / "conversations" / ".locks"
    locks.mkdir(parents=True)
    (locks / "abc.lock").symlink_to(outside)
    lock = ConversationLock(locks)
    assert lock.acquire("abc") is None
    held = locks / "abc.lock"
    assert not held.is_symlink() and held.read_text() == str(os.getpid())
    assert outside.read_text() == "not chatterm's"  # never truncated nor given our pid
    lock.release()
    (locks / "stale.lock").symlink_to(outside)
    lock.remove_unused()  # the link goes (it is in our folder), its target stays
    assert list(locks.iterdir()) == [] and outside.read_text() == "not chatterm's"


def test_the_open_chat_is_renamed_through_the_session_and_not_deleted(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    chat = saved_chat(store, "the open one")
    repl, out, err = make_repl(store)
    repl.run([f"/load {chat.id}\n", "/chats rename 1 renamed while open\n", "/chats delete 1\n"])
    assert repl.session.conversation.name == "renamed while open"
    assert store.list_chats()[0].title == "renamed while open"
    assert "is the one open here" in err.getvalue() and (store.folder / f"{chat.id}.json").exists()
    repl.run(["/clear\n", "/chats delete 1\n"])  # after /clear it is no longer open here
    assert not (store.folder / f"{chat.id}.json").exists()


@pytest.mark.slow
def test_continue_flag_opens_the_most_recent_chat():
    store = ConversationStore(data_dir() / "conversations")
    saved_chat(store, "older", age=100)
    latest = saved_chat(store, "hi")
    r = subprocess.run([sys.executable, "-m", "chatterm", str(PARROT), "-c", "--temperature", "0"],
                       input="how are you?\n", capture_output=True, text=True, timeout=120,
                       env=os.environ)
    assert r.returncode == 0, r.stderr
    assert f"loaded 2 turns from {latest.id}: hi" in r.stderr
    turns = json.loads((store.folder / f"{latest.id}.json").read_text())["turns"]
    assert [t["text"] for t in turns][::2] == ["hi", "how are you?"]


# -- input history -----------------------------------------------------------------------------


def test_input_history_is_capped_merged_and_tolerant(tmp_path):
    path = tmp_path / "history.json"
    one, two = InputHistory(path, limit=3), InputHistory(path, limit=3)
    for text in ["a", "b", "b", "  ", "c"]:
        one.add(text)
    two.add("d")  # another chatterm: merged with what is on disk
    assert one.load() == ["b", "c", "d"] and json.loads(path.read_text())["entries"] == ["b", "c", "d"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_text("{ broken")
    assert one.load() == []
    one.add("e")
    assert one.load() == ["e"]


# -- the TUI ----------------------------------------------------------------------------------


def make_app(checkpoint, resume=""):
    config = AppConfig()
    config.sampling.update({"temperature": 0})
    return ChatApp(config, str(checkpoint), [], resume=resume)


async def ready(app, pilot):
    await app.workers.wait_for_complete()
    await wait_until(pilot, lambda: app.status.busy == "", what="the model to load")


async def test_chats_screen_opens_renames_and_deletes_with_the_keyboard():
    from chatterm.ui.chats_screen import ChatsScreen

    store = ConversationStore(data_dir() / "conversations")
    older = saved_chat(store, "older chat", age=100)
    newer = saved_chat(store, "newer chat")
    app = make_app(PARROT, resume="pick")  # --resume: the list at start
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChatsScreen), what="the chats list")
        screen = app.screen
        assert [c.id for c in screen.chats] == [newer.id, older.id]
        await pilot.press("down", "r")
        await wait_until(pilot, lambda: screen.query_one("#chats-rename").display)
        await pilot.press("ctrl+u", *"renamed", "enter")
        await wait_until(pilot, lambda: any(c.title == "renamed" for c in screen.chats), what="the rename")
        assert store.list_chats()[1].title == "renamed"
        await pilot.press("up", "d", "n")  # asked, and kept
        assert len(store.list_chats()) == 2
        await pilot.press("d", "y")
        await wait_until(pilot, lambda: len(screen.chats) == 1, what="the delete")
        assert not (store.folder / f"{newer.id}.json").exists()
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ChatsScreen))
        await ready(app, pilot)
        await pilot.click(PromptInput)
        for key in "/chats":
            await pilot.press(key)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatsScreen), what="/chats")
        await pilot.press("enter")  # opens the highlighted one
        await wait_until(pilot, lambda: app.session.conversation.id == older.id, what="the chat to open")
        await wait_until(pilot, lambda: len(app.chat.query(UserMessage)) == 1)
        assert app.session.conversation.name == "renamed"
        assert app.focused is app.query_one(PromptInput)


async def test_continue_and_the_input_history_across_launches():
    store = ConversationStore(data_dir() / "conversations")
    latest = saved_chat(store, "hi")
    app = make_app(PARROT, resume="last")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        assert app.session.conversation.id == latest.id and len(app.chat.query(UserMessage)) == 1
        await pilot.click(PromptInput)
        for key in ["h", "o", "w", "space", "a", "r", "e"]:
            await pilot.press(key)
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.session.conversation.turns) == 4, what="the reply")
        await app.workers.wait_for_complete()
    again = make_app(PARROT)  # the next launch: Up brings back what was typed before
    async with again.run_test(size=(80, 24)) as pilot:
        prompt = again.query_one(PromptInput)
        prompt.focus()
        await pilot.press("up")
        await wait_until(pilot, lambda: prompt.text == "how are", what="the earlier message")
    assert InputHistory.default().load() == ["how are"]
