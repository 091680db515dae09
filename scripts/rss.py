"""Resident memory of a loaded model, and after a long chat, in a fresh process per run.

    PYTHONPATH=src python scripts/rss.py MODEL --dtype int8 [--chat-tokens 900]

Loads MODEL the way the app does (`LocalBackend.load`), prints RSS after loading and the peak
during loading, then fills the KV cache with `--chat-tokens` tokens (a prompt, then 64 decoded
tokens, the way a reply grows) and prints RSS again. One process per precision: freed memory
is not always returned to the system, so figures from one process would leak into the next.
"""

from __future__ import annotations

import argparse
import resource
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--dtype", default=None)
    p.add_argument("--chat-tokens", type=int, default=900)
    args = p.parse_args()
    from chatterm.engine.settings import SamplingSettings
    from chatterm.session.backends.local import LocalBackend

    start = time.perf_counter()
    backend = LocalBackend.load(args.model, dtype=args.dtype)
    loaded = time.perf_counter() - start
    after_load = rss_mb()
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    gen = backend.generator
    n = min(args.chat_tokens, backend.info.context_window)
    prompt = [(7 * i) % 200 + 10 for i in range(n - 64)]
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=64)
    from chatterm.engine import torch_thread

    torch_thread.call(gen.complete, prompt, settings)
    print(f"{backend.info.name} {backend.info.dtype}: load {loaded:.1f} s, RSS after load {after_load:.0f} MB "
          f"(peak during load {peak_load:.0f} MB), after {n} tokens of chat {rss_mb():.0f} MB, "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
