"""The real SmolLM2-135M-Instruct GGUF (`chatterm pull smollm2-135m-instruct`), when installed.

Skipped with a message otherwise. Looks in $CHATTERM_SMOLLM2_GGUF, then in the user data folder
(read at import: the suite points CHATTERM_DATA_DIR at a temporary folder for each test).
"""

import os
from pathlib import Path

import pytest

from chatterm.engine.events import Finished
from chatterm.engine.settings import SamplingSettings


def _installed() -> Path | None:
    from platformdirs import user_data_dir

    candidates = [os.environ.get("CHATTERM_SMOLLM2_GGUF"),
                  Path(os.environ.get("CHATTERM_DATA_DIR") or user_data_dir("chatterm")) / "models" / "smollm2-135m-instruct.gguf"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


GGUF = _installed()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="SmolLM2 not installed: run `chatterm pull smollm2-135m-instruct` (or set CHATTERM_SMOLLM2_GGUF)"),
]


@pytest.fixture(scope="module")
def backend():
    from chatterm.session.backends.local import LocalBackend

    return LocalBackend.load(GGUF, context=1024)


def test_answers_a_factual_question_and_stops_at_end_of_turn(backend):
    from chatterm.session import ChatSession, Conversation

    session = ChatSession(backend, SamplingSettings(temperature=0, max_new_tokens=40), Conversation())
    done = [e for e in session.send("What is the capital of France?") if isinstance(e, Finished)][-1]
    assert "Paris" in done.text and done.stop_reason == "eos"
    # the second turn reuses the whole first prompt and reply
    second = [e for e in session.send("And of Italy?") if isinstance(e, Finished)][-1]
    assert "Rome" in second.text
    assert second.prefill_tokens < 20 < second.prompt_tokens


def test_tokenizer_and_template_of_the_file(backend):
    tok = backend.tokenizer
    assert tok.n_vocab == 49152 and tok.special_tokens["<|im_end|>"] in tok.stop_ids
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.decode(tok.encode("naïve café, 12345 🙂")) == "naïve café, 12345 🙂"
