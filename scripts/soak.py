"""A scripted long chat: N turns through ChatSession, reporting memory and time per turn.

    python scripts/soak.py                     # 1,000 turns on a tiny random model (about a minute)
    python scripts/soak.py --checkpoint checkpoints/chitchat --turns 300

Prints the resident set size at the start, after the first tenth and at the end, and the median
time per turn over the first and the last 100 turns: a leak or a per-turn slowdown shows as a
rising RSS or a rising median.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_checkpoint(folder: Path) -> Path:
    from chatterm.engine.tokenizer import Tokenizer
    from chatterm.model import GPT, GPTConfig, save_checkpoint

    ranks = [bytes([i]) for i in range(256)]
    spec = Tokenizer.bpe_spec(ranks, {"<|endoftext|>": 256}, name="bytes")
    model = GPT(GPTConfig(block_size=256, vocab_size=320, n_layer=2, n_head=2, n_embd=64)).init_weights(0)
    return save_checkpoint(folder / "tiny", model, {"name": "tiny-random", "tokenizer": spec})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    from chatterm.engine.events import Finished
    from chatterm.engine.settings import SamplingSettings
    from chatterm.session import ChatSession, ConversationStore
    from chatterm.session.backends.local import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or tiny_checkpoint(Path(tmp))
        settings = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=0)
        session = ChatSession(LocalBackend.load(path), settings, store=ConversationStore(Path(tmp) / "convs"))
        start_rss = rss_mb()
        times, prefill = [], []
        for i in range(args.turns):
            t0 = time.perf_counter()
            for event in session.send(f"message number {i}: tell me something new"):
                if isinstance(event, Finished):
                    prefill.append(event.prefill_tokens)
            times.append(time.perf_counter() - t0)
            if i + 1 == max(1, args.turns // 10):
                tenth_rss = rss_mb()
        end_rss = rss_mb()
    first, last = times[:100], times[-100:]
    print(f"turns: {args.turns}  model: {session.backend.info.name}  window: {session.backend.info.context_window}")
    print(f"RSS MB: start {start_rss:.1f}  after {args.turns // 10} turns {tenth_rss:.1f}  end {end_rss:.1f}")
    print(f"median s/turn: first 100 {statistics.median(first):.4f}  last 100 {statistics.median(last):.4f}")
    print(f"median prefill tokens/turn: {statistics.median(prefill):.0f}  turns in history: {len(session.conversation.turns)}")


if __name__ == "__main__":
    main()
