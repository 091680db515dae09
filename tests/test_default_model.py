"""The shipped checkpoint: loads offline, chats, and its model card's validation loss holds."""

import re
from pathlib import Path

import pytest
import torch

from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession
from chatterm.session.user.folders import default_checkpoint
from chatterm.session.backends.local import LocalBackend

CARD = Path(__file__).parent.parent / "checkpoints" / "chitchat" / "README.md"


@pytest.fixture(scope="module")
def backend():
    return LocalBackend.load(default_checkpoint())


def test_default_model_answers_a_greeting(backend):
    assert backend.info.context_window >= 512
    for seed in (1, 2, 3):
        session = ChatSession(backend, SamplingSettings(seed=seed, max_new_tokens=60))
        done = list(session.send("hi! how are you?"))[-1]
        assert done.error is None and done.text.strip()
        assert "User:" not in done.text


@pytest.mark.slow
def test_validation_loss_matches_the_model_card(backend):
    pytest.importorskip("chitchat_dataset")
    from chatterm.model import load_checkpoint
    from chatterm.train.data import load_chitchat, split_documents, tokenize_documents
    from chatterm.train.trainer import evaluate

    card_loss = float(re.search(r"validation loss \| \*\*([0-9.]+)\*\*", CARD.read_text()).group(1))
    ckpt = load_checkpoint(default_checkpoint())
    assert abs(ckpt.meta["training"]["val_loss"] - card_loss) < 1e-4
    _, val_docs = split_documents(load_chitchat())
    val_ids = tokenize_documents(backend.tokenizer, val_docs)
    assert val_ids.numel() == 461_840
    with torch.inference_mode():
        loss = evaluate(ckpt.model, val_ids, 512, batches=20)
    assert abs(loss - card_loss) < 2e-3
