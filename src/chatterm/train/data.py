"""Prepare chat training data: conversations rendered in the app's chat template, tokenized.

The default corpus is the `chitchat-dataset` package (MIT licence): 7,168 open-domain
conversations between two people. Each conversation becomes two training documents, one from
each speaker's point of view (that speaker is "User", the other "Assistant", starting at the
user's first message), with consecutive messages of one speaker merged into one line and
`<|endoftext|>` between documents. 5% of the conversations, chosen by a hash of their id (so the
split never changes), are held out for validation.

`prepare(out_dir)` writes `train.pt` / `val.pt` (int32 token ids) and `tokenizer.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..engine.tokenizer import Tokenizer
from ..session.prompts.template import DEFAULT_TEMPLATE, ChatTemplate
from .bpe import count_words, train_bpe

VAL_PERCENT = 5


def chitchat_path() -> Path:
    try:
        import chitchat_dataset
    except ImportError:
        raise SystemExit("the chitchat-dataset package is missing: pip install chitchat-dataset (or '.[train]')") from None
    return Path(os.path.dirname(chitchat_dataset.__file__)) / "dataset.json"


def load_chitchat(path: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """conversation id -> [(speaker, text)] with consecutive messages of a speaker merged."""
    raw = json.loads(Path(path or chitchat_path()).read_text(encoding="utf-8"))
    out = {}
    for cid, conv in raw.items():
        lines: list[tuple[str, str]] = []
        for group in conv["messages"]:
            for msg in group:
                text = " ".join(str(msg.get("text", "")).split())
                if not text:
                    continue
                if lines and lines[-1][0] == msg["sender"]:
                    lines[-1] = (msg["sender"], lines[-1][1] + " " + text)
                else:
                    lines.append((msg["sender"], text))
        if len(lines) >= 2:
            out[cid] = lines
    return out


def render_views(lines: list[tuple[str, str]], template: ChatTemplate = DEFAULT_TEMPLATE) -> list[str]:
    """The conversation from each speaker's point of view, starting at that speaker's first line."""
    views = []
    for user in dict.fromkeys(s for s, _ in lines):
        start = next(i for i, (s, _) in enumerate(lines) if s == user)
        turns = lines[start:]
        if len(turns) < 2:
            continue
        views.append("".join(template.render_turn("user" if s == user else "assistant", t) for s, t in turns))
    return views


def is_validation(conversation_id: str) -> bool:
    return int(hashlib.sha256(conversation_id.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


def split_documents(conversations: dict) -> tuple[list[str], list[str]]:
    train, val = [], []
    for cid in sorted(conversations):
        (val if is_validation(cid) else train).extend(render_views(conversations[cid]))
    return train, val


def tokenize_documents(tokenizer: Tokenizer, docs: list[str]) -> torch.Tensor:
    """One stream of ids: each document followed by <|endoftext|>."""
    encoded = tokenizer.encoding.encode_ordinary_batch(docs, num_threads=2)
    ids: list[int] = []
    for doc in encoded:
        ids.extend(doc)
        ids.append(tokenizer.eot_id)
    return torch.tensor(ids, dtype=torch.int32)


def write_prepared(out_dir: Path, train_docs: list[str], val_docs: list[str], vocab_size: int, name: str,
                   log=print) -> tuple[Tokenizer, dict]:
    """Train the BPE on `train_docs`, tokenize both splits, write train.pt / val.pt / tokenizer.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = train_bpe(count_words(train_docs), vocab_size - 1, progress=lambda n: log(f"  BPE: {n} tokens"))
    spec = Tokenizer.bpe_spec(ranks, {"<|endoftext|>": len(ranks)}, name=name)
    tokenizer = Tokenizer.bpe(spec)
    train_ids = tokenize_documents(tokenizer, train_docs)
    val_ids = tokenize_documents(tokenizer, val_docs)
    torch.save(train_ids, out_dir / "train.pt")
    torch.save(val_ids, out_dir / "val.pt")
    (out_dir / "tokenizer.json").write_text(json.dumps(spec))
    counts = {
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "train_tokens": int(train_ids.numel()),
        "val_tokens": int(val_ids.numel()),
        "vocab_size": tokenizer.n_vocab,
        "chars_per_token": round(sum(map(len, train_docs)) / max(1, train_ids.numel()), 2),
    }
    return tokenizer, counts


def prepare(out_dir: Path, vocab_size: int = 4096, source: Path | None = None, log=print) -> dict:
    """The chitchat corpus, as the default model was trained on it."""
    conversations = load_chitchat(source)
    train_docs, val_docs = split_documents(conversations)
    log(f"{len(conversations)} conversations -> {len(train_docs)} train / {len(val_docs)} val documents")
    _, counts = write_prepared(out_dir, train_docs, val_docs, vocab_size, f"chitchat-bpe-{vocab_size}", log)
    info = {"source": "chitchat-dataset (MIT)", "conversations": len(conversations), **counts}
    (Path(out_dir) / "info.json").write_text(json.dumps(info, indent=2))
    log(json.dumps(info))
    return info


def prepare_text(text_file: Path, out_dir: Path, vocab_size: int = 4096, log=print) -> dict:
    """A user's own plain-text corpus: documents separated by blank lines, last 5% for validation."""
    text = Path(text_file).read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()] or [text]
    cut = max(1, len(docs) * (100 - VAL_PERCENT) // 100)
    train_docs, val_docs = docs[:cut], docs[cut:] or docs[-1:]
    _, counts = write_prepared(out_dir, train_docs, val_docs, vocab_size, f"bpe-{vocab_size}", log)
    info = {"source": str(text_file), **counts}
    (Path(out_dir) / "info.json").write_text(json.dumps(info, indent=2))
    return info
