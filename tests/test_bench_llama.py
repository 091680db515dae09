"""The GGUF files `chatterm bench --llama-bench` hands to llama.cpp hold our weights: a GPT written
as `gpt2` GGUF and a GGUF requantized to another type load back to (nearly) the same model."""

import pytest
import torch

from chatterm.bench_llama import find_llama_bench, requantize_gguf, write_gpt2_gguf
from chatterm.model import load_checkpoint
from chatterm.model.formats.gguf import GGUFFile
from helpers import tiny_model

pytest.importorskip("gguf")
IDS = torch.tensor([[5, 77, 120, 33, 260, 9, 41]])


@pytest.mark.parametrize("qtype,tolerance", [("F32", 1e-5), ("Q8_0", 0.03), ("Q4_0", 0.3)])
def test_gpt2_gguf_loads_back_to_our_model(tmp_path, qtype, tolerance):
    model = tiny_model(seed=1)
    write_gpt2_gguf(model, tmp_path / "m.gguf", qtype)
    loaded = load_checkpoint(tmp_path / "m.gguf").model
    assert loaded.config.n_layer == model.config.n_layer and loaded.config.tie_embeddings
    with torch.inference_mode():
        want, got = model(IDS)[0], loaded(IDS)[0]
    assert float((got - want).abs().max()) <= tolerance * float(want.abs().max())
    if qtype == "Q4_0":  # the tied vocabulary matrix stays 8-bit, as our int4 keeps it
        assert GGUFFile(tmp_path / "m.gguf").tensors["token_embd.weight"].type_name == "Q8_0"


def test_requantized_gguf_keeps_metadata_and_weights(tmp_path):
    from tiny_llama import hf_model, write_gguf

    source = write_gguf(tmp_path / "f32.gguf", hf_model("llama", seed=3), "llama")
    requantize_gguf(source, tmp_path / "q8.gguf", "Q8_0")
    a, b = load_checkpoint(source), load_checkpoint(tmp_path / "q8.gguf")
    assert a.meta["tokenizer"]["tokens"] == b.meta["tokenizer"]["tokens"]
    with torch.inference_mode():
        want, got = a.model(IDS)[0], b.model(IDS)[0]
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())


def test_missing_binary_is_not_found(tmp_path):
    assert find_llama_bench(str(tmp_path / "nope")) is None


def test_side_by_side_alternates_and_prints_a_ratio_per_precision(tmp_path, capsys):
    """A stand-in for llama-bench (it prints llama-bench's JSON with a fixed speed and records its
    arguments): the real binary is a measuring stick that CI does not build."""
    import re
    import stat
    import sys

    from chatterm.cli import main

    log = tmp_path / "calls.txt"
    fake = tmp_path / "llama-bench"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                    "print('[{\"avg_ts\": 100.0}]')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert main(["bench", "--shape", "tiny", "--runs", "2", "--new-tokens", "8", "--sections", "llamacpp",
                 "--llama-bench", str(fake), "--llama-pairs", "fp32:F32,int8:Q8_0", "--gguf-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for pair in ("fp32 vs F32", "int8 vs Q8_0"):
        ours = float(re.search(rf"\[{pair}\] ours\s+([0-9.]+) tok/s .*llama.cpp\s+100.0 tok/s -> ours/theirs ([0-9.]+)x", out).group(1))
        assert ours > 0
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and all("-p 0 -n 8" in c for c in calls)
    assert (tmp_path / "tiny-seed0-Q8_0.gguf").exists()
