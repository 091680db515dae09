"""Files the user owns: ids never become paths outside the store, /load never changes what it
reads, /save and /export never silently replace, two processes never lose each other's turns,
stray temporary files are cleaned up."""

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatterm.repl import PlainChat
from chatterm.session import ChatSession, Conversation, ConversationStore, read_conversation

SRC = str(Path(__file__).parent.parent / "src")
NotAConversationError = ValueError  # its base class: these tests also run against older code


def is_valid_id(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,80}", value) is not None


def _conversation_file(path: Path, conversation_id) -> Path:
    data = {"id": conversation_id, "system": "", "turns": [{"role": "user", "text": "hi"}]}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("hostile", ["../../escaped", "/tmp/chatterm-hostile-target", "a/b", "..", "", 7, "x" * 500])
def test_an_id_read_from_a_file_never_becomes_a_path_outside_the_store(tmp_path, hostile):
    store = ConversationStore(tmp_path / "data" / "conversations")
    outside = tmp_path / "escaped.json"
    loaded = read_conversation(_conversation_file(tmp_path / "in.json", hostile))
    assert loaded.id != hostile and is_valid_id(loaded.id)
    saved = store.save(loaded)
    assert saved.parent == store.folder and saved.exists()
    assert not outside.exists() and not Path("/tmp/chatterm-hostile-target.json").exists()


def test_the_store_refuses_a_bad_id_set_in_code(tmp_path):
    store = ConversationStore(tmp_path / "c")
    conversation = Conversation()
    conversation.id = "../../etc/x"
    with pytest.raises(ValueError, match="not one chatterm made"):
        store.path_for(conversation)
    store.save(conversation)  # saving gives it a proper id instead
    assert is_valid_id(conversation.id) and list(store.folder.glob("*.json"))


def test_a_symlink_in_the_store_is_replaced_never_written_through_and_autosave_goes_on(tmp_path):
    store = ConversationStore(tmp_path / "c")
    warnings = []
    session = ChatSession(None, store=store, warn=warnings.append)
    session.conversation.add("user", "hi")
    session.save()
    own = store.path_for(session.conversation)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("not chatterm's")
    own.unlink()
    own.symlink_to(elsewhere)
    session.conversation.add("assistant", "hello")
    session.save()  # raised ValueError ("points outside"), out of the reply's worker
    assert warnings == [] and elsewhere.read_text() == "not chatterm's"
    assert not own.is_symlink() and [t.text for t in read_conversation(own).turns] == ["hi", "hello"]


def _not_conversations(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "export.md").write_text("# hi\n\n**User:** hi\n")
    (tmp_path / "notes.txt").write_text("just text\n")
    (tmp_path / "list.json").write_text('[{"role": "user"}]')
    (tmp_path / "other.json").write_text('{"name": "some package"}')
    return [folder, tmp_path / "export.md", tmp_path / "notes.txt", tmp_path / "list.json", tmp_path / "other.json"]


def test_loading_something_else_is_one_line_and_never_touches_it(tmp_path):
    paths = _not_conversations(tmp_path) + [Path("/etc/passwd")]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in paths}
    for path in paths:
        with pytest.raises(NotAConversationError) as err:
            read_conversation(path)
        assert str(err.value) == f"{path}: not a chatterm conversation"
    after = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in paths}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths[:-1])  # nothing moved aside


def test_loading_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(read_conversation, fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked in open(): let it go, then fail
        open(fifo, "w").close()
        pytest.fail("reading a FIFO blocked")
    assert outcome == [f"{fifo}: not a chatterm conversation"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as e:
        return str(e)
    return None


def test_a_damaged_file_in_the_store_is_one_line_and_stays_as_it_is(tmp_path):
    """The store's own files are read like any other: a torn one is reported, never moved or
    rewritten, and the chats list leaves it out."""
    from chatterm.session.saved_chats import SavedChats

    store = ConversationStore(tmp_path / "c")
    session = ChatSession(None, store=store)
    session.conversation.add("user", "hi")
    session.save()
    own = store.path_for(session.conversation)
    chat_id = session.conversation.id
    session.clear()
    own.write_text('{"turns": [')  # torn by something else
    before = own.stat().st_mtime_ns
    with pytest.raises(NotAConversationError, match="not a chatterm conversation"):
        SavedChats(session).open(chat_id)
    assert own.read_text() == '{"turns": [' and own.stat().st_mtime_ns == before
    assert store.list_chats() == [] and sorted(p.name for p in store.folder.iterdir() if p.suffix == ".json") == [own.name]


def _plain(tmp_path):
    session = ChatSession(None, conversation=Conversation(system="be brief"))
    session.conversation.add("user", "hello \x1b]0;pwned\x07there")
    session.conversation.add("assistant", "a reply \x1b[2J with escapes")
    err = _Lines()
    return PlainChat(session, out=_Lines(), err=err), err


class _Lines:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.parametrize("command", ["save", "export"])
def test_save_and_export_replace_a_file_only_with_force_and_keep_its_mode(tmp_path, command):
    repl, err = _plain(tmp_path)
    target = tmp_path / "mine.txt"
    target.write_text("precious")
    os.chmod(target, 0o640)
    repl.commands.run(f"/{command} {target}")
    assert target.read_text() == "precious"
    assert err.text.strip() == f"{target}: already exists; add --force to replace it"
    repl.commands.run(f"/{command} {target} --force")
    assert target.read_text() != "precious"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    fresh = tmp_path / "new.out"
    repl.commands.run(f"/{command} {fresh}")
    assert fresh.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another owner")
def test_replacing_a_file_keeps_its_owner_group_and_mode(tmp_path):
    """The rename that makes a save atomic gives the path a new inode, created by whoever saves:
    root saving over a user's file with --force used to hand it to root."""
    repl, _ = _plain(tmp_path)
    target = tmp_path / "theirs.json"
    target.write_text("old")
    os.chown(target, 1234, 4321)
    os.chmod(target, 0o2640)  # set-group-ID too: chown clears it, so the order matters
    repl.commands.run(f"/save {target} --force")
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 4321, 0o2640)
    assert read_conversation(target).turns


def test_save_into_a_folder_that_does_not_exist_is_refused(tmp_path):
    """`/save no/such/dir/x.json` made the folders: a typo became new folders on the user's disk."""
    repl, err = _plain(tmp_path)
    typo = tmp_path / "no" / "such" / "x.json"
    repl.commands.run(f"/save {typo}")
    assert err.text.strip() == f"{typo}: the folder {typo.parent} does not exist; choose another path"
    assert not (tmp_path / "no").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err.text = ""
    repl.commands.run(f"/export {a_file / 'chat.md'}")
    assert err.text.strip().endswith(f"the folder {a_file} is not a folder; choose another path")


def test_export_makes_escape_sequences_inert(tmp_path):
    repl, _ = _plain(tmp_path)
    repl.commands.run(f"/export {tmp_path / 'chat.md'}")
    text = (tmp_path / "chat.md").read_text()
    assert "\x1b" not in text and "\x07" not in text and "a reply [2J" not in text and "with escapes" in text


def test_saved_json_escapes_c1_controls_and_loads_back_the_same(tmp_path):
    """json escapes C0 controls only; U+009B is CSI to some terminals, so `cat` of a saved chat
    could still act. Escaped, the file is inert and reads back unchanged."""
    repl, _ = _plain(tmp_path)
    repl.session.conversation.add("user", "csi \x9b2J nel \x85 del \x7f é ✓")
    target = tmp_path / "chat.json"
    repl.commands.run(f"/save {target}")
    raw = target.read_bytes()
    assert not any(0x7F <= ord(c) <= 0x9F for c in raw.decode("utf-8")) and b"\\u009b" in raw
    assert read_conversation(target).turns[-1].text == "csi \x9b2J nel \x85 del \x7f é ✓"


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo", "device"])
def test_save_refuses_symlinks_folders_fifos_and_devices_with_one_line(tmp_path, kind):
    repl, err = _plain(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = {"device": Path("/dev/null")}.get(kind, tmp_path / "target")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    for command in (f"/save {target} --force", f"/export {target} --force"):
        err.text = ""
        repl.commands.run(command)
        assert err.text.count("\n") == 1 and err.text.startswith(f"{target}: is a") and "regular files" in err.text
    assert victim.read_text() == "keep me"
    assert target.is_symlink() or target.is_dir() or target.is_fifo() or target.is_char_device()


def test_force_is_a_trailing_flag_of_save_and_export():
    from chatterm.session.commands import parse_command
    from chatterm.session.chats.persistence import FileRefusedError, write_user_file

    def parts(line):
        command = parse_command(line)
        return command.arg, command.flags

    assert parts("/save a b.json --force") == ("a b.json", frozenset({"--force"}))
    assert parts("/export x.md --force") == ("x.md", frozenset({"--force"}))
    assert parts("/export x--force") == ("x--force", frozenset())
    with pytest.raises(FileRefusedError):
        write_user_file(Path(__file__), "x")


_HOLDER = """
import sys
from chatterm.session import ConversationStore, read_conversation
store = ConversationStore(sys.argv[1])
conversation = read_conversation(sys.argv[2])
store.claim(conversation)
conversation.add("user", "from the first process")
store.save(conversation)
print("holding", flush=True)
sys.stdin.read()  # hold the conversation open until told to finish
conversation.add("user", "the first process again")
store.save(conversation)
"""


def test_two_processes_continuing_one_conversation_lose_no_turns(tmp_path):
    folder = tmp_path / "convs"
    start = ConversationStore(folder)
    original = Conversation()
    original.add("user", "the start")
    saved = start.save(original)
    start.close()
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(saved)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert first.stdout.readline().strip() == "holding"
        warnings = []
        second = ChatSession(None, store=ConversationStore(folder), warn=warnings.append)
        second.load_conversation(read_conversation(saved))
        assert len(warnings) == 1 and "open in another chatterm (pid" in warnings[0] and "copy" in warnings[0]
        forked_id = second.conversation.id
        assert forked_id != original.id
        second.conversation.add("user", "from the second process")
        second.save()
    finally:
        first.communicate("", timeout=30)
    assert first.returncode == 0
    texts = lambda cid: [t.text for t in read_conversation(folder / f"{cid}.json").turns]  # noqa: E731
    assert texts(original.id) == ["the start", "from the first process", "the first process again"]
    assert texts(forked_id) == ["the start", "from the first process", "from the second process"]
    # Once the first has quit, the conversation can be continued under its own id again.
    third = ConversationStore(folder)
    assert third.claim(read_conversation(saved)) == ""


def test_loading_an_older_copy_never_overwrites_the_saved_chat(tmp_path):
    """A `/save` copy keeps the conversation's id; loading it later and chatting on must not
    autosave its older turns over the store's newer file of that id."""
    from chatterm.session.chats.persistence import write_conversation
    from chatterm.session.saved_chats import SavedChats

    store = ConversationStore(tmp_path / "c")
    session = ChatSession(None, store=store, warn=lambda line: None)
    session.conversation.add("user", "turn 1")
    session.save()
    original_id = session.conversation.id
    backup = write_conversation(tmp_path / "backup.json", session.conversation)
    session.conversation.add("user", "turn 2")
    session.save()
    line = SavedChats(session).open(str(backup))
    assert session.conversation.id != original_id and "kept as it is" in line and original_id in line
    session.conversation.add("user", "turn 2 of the copy")
    session.save()
    assert [t.text for t in read_conversation(store.file_for(original_id)).turns] == ["turn 1", "turn 2"]
    assert [t.text for t in read_conversation(backup).turns] == ["turn 1"]
    copy = read_conversation(store.file_for(session.conversation.id))
    assert [t.text for t in copy.turns] == ["turn 1", "turn 2 of the copy"]
    # The store's own file, or a copy whose id the store does not hold, keeps its id.
    SavedChats(session).open(original_id)
    assert session.conversation.id == original_id
    lone = tmp_path / "lone.json"
    lone.write_text(json.dumps({"id": "20260101-000000-0000abcd", "turns": [{"role": "user", "text": "x"}]}))
    SavedChats(session).open(str(lone))
    assert session.conversation.id == "20260101-000000-0000abcd"


def test_lone_surrogates_in_a_loaded_file_become_replacement_characters(tmp_path):
    """JSON can spell a lone UTF-16 surrogate. Decoded as is, the text could never be printed or
    saved again: the next autosave failed, and in --plain the next message died in a traceback."""
    path = tmp_path / "odd.json"
    path.write_text('{"system": "s\\udfff", "turns": [{"role": "user", "text": "a\\ud800b \\ud83d\\ude00"}]}')
    loaded = read_conversation(path)
    assert loaded.turns[0].text == "a\ufffdb \U0001F600" and loaded.system == "s\ufffd"
    store = ConversationStore(tmp_path / "c")
    warnings = []
    session = ChatSession(None, store=store, warn=warnings.append)
    session.load_conversation(loaded)
    session.conversation.add("user", "next")
    session.save()
    assert warnings == [] and read_conversation(store.file_for(session.conversation.id)).turns[-1].text == "next"


def test_an_autosave_that_fails_on_the_text_is_a_warning_not_a_traceback(tmp_path):
    store = ConversationStore(tmp_path / "c")
    warnings = []
    session = ChatSession(None, store=store, warn=warnings.append)
    session.conversation.add("user", "cannot be UTF-8: \ud800")  # only code can make one now
    session.save()  # raised AttributeError ('UnicodeEncodeError' has no 'strerror') from the handler
    assert len(warnings) == 1 and warnings[0].startswith("autosave failed") and "surrogate" in warnings[0]
    session.conversation.turns[-1].text = "fine"
    session.save()
    assert warnings[-1].startswith("autosave works again")


def test_stray_temporary_files_are_cleaned_on_the_next_start(tmp_path):
    folder = tmp_path / "convs"
    folder.mkdir()
    stray = folder / ".20260101-000000-abcdef01.json.k2j3h4.tmp"
    stray.write_text('{"turns": [')
    busy = Conversation()
    holder = ConversationStore(folder)
    holder.claim(busy)
    in_flight = folder / f".{busy.id}.json.zzzz.tmp"  # being written by the process holding it
    in_flight.write_text("{")
    ConversationStore(folder)
    assert not stray.exists() and in_flight.exists()
    holder.close()
    ConversationStore(folder)
    assert not in_flight.exists()


def test_stray_temporary_files_of_the_config_and_the_input_history_are_cleaned(tmp_path):
    from chatterm.session.user.config import load_config
    from chatterm.session.user.input_history import InputHistory

    config, history = tmp_path / "config.toml", tmp_path / "input_history.json"
    old = [tmp_path / ".config.toml.k2j3h4.tmp", tmp_path / ".input_history.json.abcd12.tmp"]
    fresh = tmp_path / ".config.toml.zzzz99.tmp"  # maybe being written by another chatterm now
    other = tmp_path / ".notes.txt.aaaa11.tmp"  # not ours to judge
    for path in [*old, fresh, other]:
        path.write_text("half")
    for path in (*old, other):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    load_config(config)
    InputHistory(history)
    assert not any(p.exists() for p in old) and fresh.exists() and other.exists()


def test_a_checkpoint_save_removes_what_an_interrupted_save_left(tmp_path):
    """A killed `chatterm convert` or `train` leaves `.model.safetensors.*.tmp` (as big as the
    model) beside the checkpoint; the next save into that folder removes it once it is old."""
    from chatterm.model import save_checkpoint
    from helpers import tiny_model

    folder = tmp_path / "ckpt"
    folder.mkdir()
    stale = folder / ".model.safetensors.k2j3h4.tmp"
    fresh = folder / ".chatterm.json.zzzz99.tmp"  # maybe another process writing now
    other = folder / ".notes.txt.aaaa11.tmp"
    for path in (stale, fresh, other):
        path.write_text("half")
    for path in (stale, other):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    save_checkpoint(folder, tiny_model())
    assert not stale.exists() and fresh.exists() and other.exists()


def test_convert_writes_into_a_folder_with_files_only_with_force(tmp_path, capsys):
    from chatterm.cli import main
    from chatterm.model import save_checkpoint
    from helpers import byte_tokenizer_spec, tiny_model

    source = save_checkpoint(tmp_path / "src", tiny_model(seed=1), {"tokenizer": byte_tokenizer_spec(), "name": "new"})
    other = save_checkpoint(tmp_path / "other", tiny_model(seed=2), {"tokenizer": byte_tokenizer_spec(), "name": "old"})
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for dst, message in ((other, "already holds files; add --force"), (a_file, "is not a folder")):
        assert main(["convert", str(source), str(dst)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before and a_file.read_text() == "mine"
    assert main(["convert", str(source), str(other), "--force"]) == 0
    assert json.loads((other / "chatterm.json").read_text())["name"] == "new"
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(source), str(tmp_path / "empty")]) == 0
