"""Load time, time to first token, decode speed and memory of one model, over two chat turns.

    PYTHONPATH=src python scripts/measure_chat.py smollm2-135m-instruct [--context N]

Prints each reply's start and its figures (from the engine's `Finished` events), then the load
time and the resident memory (/proc/self/status; Linux).
"""

import argparse
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="path or installed model name")
    parser.add_argument("--context", type=int, default=None)
    args = parser.parse_args()
    from chatterm.engine.events import Finished
    from chatterm.engine.settings import SamplingSettings
    from chatterm.session import ChatSession, Conversation
    from chatterm.session.backends.local import LocalBackend

    start = time.perf_counter()
    backend = LocalBackend.load(args.model, context=args.context)
    load_s = time.perf_counter() - start
    loaded_mb = rss_mb()
    session = ChatSession(backend, SamplingSettings(temperature=0, max_new_tokens=128), Conversation())
    for prompt in ("What is the capital of France?", "Write a short poem about the sea."):
        done = [e for e in session.send(prompt) if isinstance(e, Finished)][-1]
        print(repr(done.text[:120]))
        print(f"  prompt {done.prompt_tokens} tokens ({done.prefill_tokens} prefilled), {done.new_tokens} new, "
              f"stop {done.stop_reason}, TTFT {done.ttft_s * 1000:.0f} ms, decode {done.tokens_per_s:.1f} tok/s")
    print(f"load {load_s:.1f} s, window {backend.info.context_window}, RSS after load {loaded_mb:.0f} MB, at end {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
