"""Training: the BPE trainer, chat data rendering, and a tiny model whose loss falls and resumes."""

import json

import torch

from chatterm.engine.tokenizer import Tokenizer
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import load_checkpoint
from chatterm.train.bpe import count_words, train_bpe
from chatterm.train.data import load_chitchat, render_views, split_documents, tokenize_documents
from chatterm.train.trainer import TrainConfig, lr_at, train

SAMPLE = "the cat sat on the mat. the cat ate. café crème, naïve 日本語 😀\n"


def test_bpe_learns_frequent_pairs_and_round_trips_through_tiktoken():
    ranks = train_bpe(count_words([SAMPLE * 20]), 300)
    assert ranks[:256] == [bytes([i]) for i in range(256)]
    assert b" the" in ranks and b" cat" in ranks
    tok = open_tokenizer(Tokenizer.bpe_spec(ranks, {"<|endoftext|>": len(ranks)}))
    for text in (SAMPLE, "unseen words ünïcödé 🎉", ""):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(SAMPLE)) < len(SAMPLE.encode()) / 2


def _chitchat_file(tmp_path):
    def msg(sender, text):
        return {"text": text, "sender": sender, "timestamp": "t"}

    data = {
        f"conv{i}": {"messages": [[msg("a", "hello"), msg("a", "how are you?")], [msg("b", "fine\nthanks")],
                                   [msg("a", "cool")]]}
        for i in range(40)
    }
    data["lonely"] = {"messages": [[msg("a", "anyone?")]]}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_chat_rendering_merges_speakers_and_uses_both_points_of_view(tmp_path):
    convs = load_chitchat(_chitchat_file(tmp_path))
    assert "lonely" not in convs  # one speaker only: not a conversation
    views = render_views(convs["conv0"])
    assert views[0] == "User: hello how are you?\nAssistant: fine thanks\nUser: cool\n"
    assert views[1] == "User: fine thanks\nAssistant: cool\n"
    train_docs, val_docs = split_documents(convs)
    assert len(train_docs) + len(val_docs) == 80 and 0 < len(val_docs) < 20
    assert split_documents(convs) == (train_docs, val_docs)  # deterministic


def test_tiny_model_trains_loss_falls_and_resumes(tmp_path):
    text = "User: hi\nAssistant: hello there\n" * 200
    ranks = train_bpe(count_words([text]), 280)
    spec = Tokenizer.bpe_spec(ranks, {"<|endoftext|>": len(ranks)})
    tok = open_tokenizer(spec)
    data = tmp_path / "data"
    data.mkdir()
    ids = tokenize_documents(tok, [text])
    torch.save(ids, data / "train.pt")
    torch.save(ids[:400], data / "val.pt")
    (data / "tokenizer.json").write_text(json.dumps(spec))
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), n_layer=1, n_head=2, n_embd=32, block_size=64,
                      batch_size=4, max_steps=30, warmup_steps=5, lr=5e-3, eval_every=15, eval_batches=2,
                      log_every=10, device="cpu", save_dtype="fp32")
    logs = []
    state = train(cfg, log=logs.append)
    history = state["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] < 6.0
    assert history[-1]["train_loss"] < 2.0
    ckpt = load_checkpoint(cfg.out)
    assert ckpt.meta["training"]["step"] == 30 and ckpt.meta["tokenizer"] == spec
    cfg.max_steps = 45
    state = train(cfg, log=logs.append)
    assert any("resumed" in line and "step 30" in line for line in logs)
    assert state["step"] == 45 and [h["step"] for h in state["history"]] == [15, 30, 45]


def test_learning_rate_schedule():
    cfg = TrainConfig(data="", out="", lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == 1e-4 and lr_at(9, cfg) == 1e-3
    assert abs(lr_at(60, cfg) - 5.5e-4) < 1e-9 and abs(lr_at(110, cfg) - 1e-4) < 1e-12
