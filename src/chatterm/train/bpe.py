"""Train a byte-level BPE whose ranks tiktoken can run.

Text is split into pieces by the GPT-2 pattern (so merges never cross a word boundary), the
pieces are counted, and the most frequent adjacent pair is merged repeatedly. Pair counts are
updated incrementally: a merge only touches the words that contain the pair, which keeps a few
thousand merges over ~100k distinct words to a minute or two in pure Python.

The result is the list of token byte strings in rank order: the 256 single bytes first, then one
token per merge, which is exactly what `tiktoken.Encoding(mergeable_ranks=...)` needs.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import regex

from ..engine.tokenizer import GPT2_PATTERN


def count_words(texts, pattern: str = GPT2_PATTERN) -> Counter:
    """How often each pre-tokenized piece (as bytes) occurs."""
    pat = regex.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(m.encode("utf-8") for m in pat.findall(text))
    return counts


def train_bpe(word_counts: Counter, vocab_size: int, *, progress=None) -> list[bytes]:
    """Token bytes in rank order: 256 single bytes, then `vocab_size - 256` merges (fewer if the
    data runs out of pairs)."""
    if vocab_size < 256:
        raise ValueError("vocab_size must be at least 256 (the single bytes)")
    words = [list(w) for w in word_counts]  # each word as a list of token ids
    freqs = list(word_counts.values())
    vocab = [bytes([i]) for i in range(256)]
    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indexes of words holding it
    for wi, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += freqs[wi]
            where[pair].add(wi)
    # Max-heap of (-count, pair bytes for deterministic ties, pair); stale entries are skipped.
    heap = [(-c, vocab[a] + vocab[b], (a, b)) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or -neg <= 0:
            if pair_counts.get(pair, 0) > 0:  # stale count: push the current one back
                heapq.heappush(heap, (-pair_counts[pair], vocab[pair[0]] + vocab[pair[1]], pair))
            continue
        new_id = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        changed: Counter = Counter()
        for wi in list(where.pop(pair, ())):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):  # remove the word's old pairs
                changed[p] -= f
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[wi] = merged
            for p in zip(merged, merged[1:]):  # and add its new ones
                changed[p] += f
                where[p].add(wi)
        pair_counts.pop(pair, None)
        for p, delta in changed.items():
            if delta == 0 or p == pair:
                continue
            pair_counts[p] += delta
            if pair_counts[p] <= 0:
                pair_counts.pop(p)
            elif delta > 0:
                heapq.heappush(heap, (-pair_counts[p], vocab[p[0]] + vocab[p[1]], p))
        if progress and len(vocab) % 500 == 0:
            progress(len(vocab))
    return vocab
