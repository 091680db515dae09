"""One long-lived thread runs the process's torch work: loading, prefill, decoding.

Why: torch's CPU kernels parallelise with OpenMP, and libgomp gives every OS thread that starts
parallel work its own team of worker threads. Once two threads own teams there are more OpenMP
threads than cores, and libgomp throttles the spin-waiting that makes its fork/join cheap, so
each of the hundreds of small parallel regions in a decode step pays a sleep and a wake-up.
Measured on 2 cores (torch 2.13, GPT-2 small, fp32): 72.8 tokens/s with all torch work on one
thread, 55 once a second thread has run torch too (the 4M-parameter default model: ~950 vs
~400). Front ends run replies in whichever thread suits them (Textual starts a new one per
worker); funnelling the torch calls through this thread keeps one team for the whole process.

`call(fn, ...)` runs a function there and returns its result; `iterate(make)` runs a generator
there and hands its items to the calling thread as they come. Both run inline when already on
the torch thread, so nesting never deadlocks.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
THREAD_NAME = "chatterm-torch"

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return _executor


def on_torch_thread() -> bool:
    return threading.current_thread().name.startswith(THREAD_NAME)


def call(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on the torch thread; its exception, if any, is raised here."""
    if on_torch_thread():
        return fn(*args, **kwargs)
    return _pool().submit(fn, *args, **kwargs).result()


_DONE = object()


def iterate(make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """The items of the iterator `make()`, which runs on the torch thread. Closing this
    iterator early stops that one at its next item (a generator's cleanup then runs there)."""
    if on_torch_thread():
        yield from make()
        return
    items: queue.SimpleQueue = queue.SimpleQueue()
    abandoned = threading.Event()

    def produce() -> None:
        source = None
        try:
            source = make()
            for item in source:
                items.put((item, None))
                if abandoned.is_set():
                    break
        except BaseException as e:  # handed to the consumer, raised in its thread
            items.put((_DONE, e))
            return
        finally:
            getattr(source, "close", lambda: None)()  # a generator's `with` blocks exit here, now
        items.put((_DONE, None))

    _pool().submit(produce)
    try:
        while True:
            item, error = items.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        abandoned.set()
