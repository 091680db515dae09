"""piped_lines: the plain REPL's lines from a pipe, read in a wait that any signal ends."""

import os
import signal
import threading
from pathlib import Path

import pytest

import chatterm.piped_lines as piped
from chatterm.piped_lines import piped_lines
from helpers import poll_until


def _pipe_holding(data: bytes):
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return os.fdopen(read_end, "r", encoding="utf-8")


def test_the_lines_are_those_text_mode_reads():
    with _pipe_holding("one\r\ntwo\n\nthré\nno newline at the end".encode()) as stream:
        assert list(piped_lines(stream)) == ["one\n", "two\n", "\n", "thré\n", "no newline at the end"]


def test_a_character_split_between_two_reads_comes_whole(monkeypatch):
    monkeypatch.setattr(piped, "_CHUNK", 1)  # every read() returns one byte
    with _pipe_holding("añ€\n".encode()) as stream:
        assert list(piped_lines(stream)) == ["añ€\n"]


def test_a_stream_without_a_file_descriptor_is_iterated_as_it_is():
    import io

    stream = io.StringIO("a\nb\n")
    assert piped_lines(stream) is stream


def _waiting(native_id: int) -> bool:
    """Whether the thread sleeps in a wait that is not for a lock (the GIL's included)."""
    task = Path(f"/proc/self/task/{native_id}")
    try:
        state = task.joinpath("stat").read_text().rpartition(")")[2].split()[0]
        wchan = task.joinpath("wchan").read_text()
    except OSError:  # no /proc: the test then sends its signal at once
        return True
    return state == "S" and "futex" not in wchan


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_a_signal_that_another_thread_takes_still_ends_the_wait():
    """The race that `for line in sys.stdin` loses: a signal whose C-level handler runs while the
    main thread is not in its read() (before it, or, as here where the main thread blocks
    SIGINT, on another thread) does not interrupt that read(), and Python's handler (the quit)
    waits for the next line; a script that sends Ctrl+C right after "(stopped)" could wait for
    ever. Here the handler must run while no line comes."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(read_end, "r", encoding="utf-8")
    main = threading.get_native_id()
    interrupted, late = threading.Event(), threading.Event()

    def ctrl_c_then_a_line():
        try:
            poll_until(lambda: _waiting(main), what="the main thread to wait for a line")
            os.kill(os.getpid(), signal.SIGINT)
            interrupted.wait(timeout=30)
        finally:
            if not interrupted.is_set():  # the wait goes on: a line ends it (and the test fails)
                late.set()
                os.write(write_end, b"a line\n")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # another thread takes it
    helper = threading.Thread(target=ctrl_c_then_a_line)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            try:
                next(iter(piped_lines(stream)))
            except KeyboardInterrupt:
                interrupted.set()
                raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        helper.join()
        signal.signal(signal.SIGINT, previous)
        os.close(write_end)
        stream.close()
    assert not late.is_set()
