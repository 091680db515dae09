import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

# Every property test draws the same examples on every run, so the suite is deterministic; a
# failing draw found while developing goes into the test as an explicit @example.
hypothesis_settings.register_profile("chatterm", derandomize=True, database=None, deadline=None)
hypothesis_settings.load_profile("chatterm")

from helpers import byte_tokenizer_spec, save_tiny_checkpoint, tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path, monkeypatch):
    """Never touch the real user's config or conversations."""
    monkeypatch.setenv("CHATTERM_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("CHATTERM_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_kernel_cache(tmp_path_factory):
    """chatterm's CPU kernels are built once per test run, into a folder of the run's own (the
    variable reaches the chatterm subprocesses that tests start, too)."""
    import os

    os.environ["CHATTERM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


SAVED_PARROT = Path(__file__).parent / "data" / "snapshot_parrot"  # written by make_snapshot_parrot.py


@pytest.fixture(scope="session")
def parrot():
    """(model, tokenizer) of a tiny GPT that recites PARROT_SCRIPT under greedy decoding: the
    saved copy of what `train_parrot()` gives, so a run does not spend 40 s or more training it
    (test_one_place.py checks, among the slow tests, that training still gives the same replies)."""
    from chatterm.engine.tokenizers import open_tokenizer
    from chatterm.model import load_checkpoint

    saved = load_checkpoint(SAVED_PARROT)
    return saved.model.eval(), open_tokenizer(saved.meta["tokenizer"])


@pytest.fixture(scope="session")
def parrot_checkpoint(parrot, tmp_path_factory) -> Path:
    """The parrot saved in our checkpoint format."""
    model, _ = parrot
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "parrot", model, name="parrot")


@pytest.fixture(scope="session")
def babbler(tmp_path_factory) -> Path:
    """A random tiny model without an end-of-text token: it never says "User:", so its replies
    run until stopped or to max_new_tokens."""
    folder = tmp_path_factory.mktemp("babbler") / "b"
    return save_tiny_checkpoint(folder, tiny_model(seed=0), byte_tokenizer_spec(eot=False), name="babbler")
