"""Token counts for a model whose tokenizer lives on a server.

`TokenCounter` stands in for a tokenizer where only the number of tokens matters: it lets
`PromptBuilder` (prompt.py) fit a remote conversation to the window with the same rules as a
local one. With a server that tokenizes (llama.cpp's `/tokenize`) the counts are exact; otherwise,
or when that call fails, a text counts as one token per CHARS_PER_TOKEN characters, rounded up:
conservative for English with the usual BPE vocabularies (about 4 characters a token), so an
estimated prompt errs towards fitting. Estimated counts are lists of -1 (real ids are >= 0), so
`estimated` can tell the two apart.
"""

from __future__ import annotations

import math
from collections import OrderedDict

CHARS_PER_TOKEN = 3
_CACHE_SIZE = 512  # texts whose counts are kept (turns are tokenized once per conversation)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class TokenCounter:
    def __init__(self, client=None, key: str = "estimate") -> None:
        self.client = client  # a ServerClient whose server has /tokenize, or None
        # Names the vocabulary, as a tokenizer's `key` does: ids cached on turns under this key
        # are never mistaken for a local model's.
        self.key = f"{key}:{'server' if client is not None else f'chars/{CHARS_PER_TOKEN}'}"
        self._counted: OrderedDict[str, list[int]] = OrderedDict()
        self.estimated = True  # whether the last count used an estimate anywhere
        self.bos_id: int | None = None  # a server adds its own start token: none is counted here
        self.add_bos = False

    def encode(self, text: str) -> list[int]:
        """Token ids from the server, or an estimate's worth of -1s. May call the server."""
        if text in self._counted:
            self._counted.move_to_end(text)
            return self._counted[text]
        ids = self._tokenize(text) if self.client is not None else None
        if ids is None:
            ids = [-1] * estimate_tokens(text)
        self._counted[text] = ids
        if len(self._counted) > _CACHE_SIZE:
            self._counted.popitem(last=False)
        return ids

    def _tokenize(self, text: str) -> list[int] | None:
        answer = self.client.post_json("/tokenize", {"content": text, "add_special": False}, root=True, timeout=5.0)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            return None
        ids = [t if isinstance(t, int) else t.get("id", 0) if isinstance(t, dict) else 0 for t in tokens]
        return [max(0, i) for i in ids]

    def count(self, text: str, *, cached_only: bool) -> tuple[int, bool]:
        """(tokens, exact). With `cached_only`, texts the server has not counted are estimated."""
        ids = self._counted.get(text)
        if ids is None:
            if cached_only:
                return estimate_tokens(text), False
            ids = self.encode(text)
        return len(ids), bool(ids) and ids[0] >= 0 or not text

    def count_cached(self, prompts, conversation) -> int:
        """The next prompt's size without calling the server (for the context meter)."""
        pieces = prompts.template.transcript(conversation.system, conversation.turns[conversation.context_start :])
        total, exact = 0, True
        for piece in pieces:
            n, piece_exact = self.count(piece, cached_only=True)
            total += n
            exact = exact and piece_exact
        self.estimated = not exact or self.client is None
        return total
