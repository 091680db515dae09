"""All torch work runs on one thread (see engine/torch_thread.py)."""

import threading

import pytest

from chatterm.engine import torch_thread
from chatterm.engine.events import Finished
from chatterm.engine.settings import SamplingSettings
from chatterm.session.chat import ChatSession
from chatterm.session.backends.local import LocalBackend


def test_call_and_iterate_run_there_and_hand_back_results():
    assert not torch_thread.on_torch_thread()
    assert torch_thread.call(threading.current_thread) is not threading.current_thread()
    assert torch_thread.call(lambda: torch_thread.call(lambda: 7)) == 7  # nesting runs inline

    def numbers():
        for i in range(5):
            assert torch_thread.on_torch_thread()
            yield i

    assert list(torch_thread.iterate(numbers)) == [0, 1, 2, 3, 4]


def test_errors_reach_the_caller_and_closing_early_stops_the_source():
    def broken():
        yield 1
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        list(torch_thread.iterate(broken))

    stopped = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            stopped.set()

    items = torch_thread.iterate(endless)
    assert next(items) == 0
    items.close()
    assert stopped.wait(5)
    assert torch_thread.call(lambda: "still serving") == "still serving"


def test_loading_and_replies_run_on_the_torch_thread(parrot_checkpoint):
    seen = set()
    backend = LocalBackend.load(parrot_checkpoint)
    forward = backend.generator.model.forward

    def spy(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    backend.generator.model.forward = spy
    session = ChatSession(backend, SamplingSettings(temperature=0))
    done = [e for e in session.send("hi") if isinstance(e, Finished)][0]
    assert done.text.strip() == "hello there, friend"
    assert seen and all(name.startswith(torch_thread.THREAD_NAME) for name in seen)
