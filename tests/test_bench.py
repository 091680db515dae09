"""`chatterm bench` runs end to end and prints sane figures (no speed is asserted here)."""

import re

import pytest

from chatterm.cli import main


def test_bench_prints_every_model_section(capsys):
    assert main(["bench", "--shape", "tiny", "--runs", "1", "--new-tokens", "8", "--dtypes", "fp32",
                 "--contexts", "16,64", "--no-hf", "--sections", "decode,uncached,bound,prefill,turns,sampling"]) == 0
    out = capsys.readouterr().out
    plain = float(re.search(r"decode\s+([0-9.]+) tok/s with F.linear", out).group(1))
    packed = float(re.search(r"decode\s+([0-9.]+) tok/s \(cached", out).group(1))
    assert plain > 0 and packed > 0
    assert re.search(r"at \d+ tokens of context: cached\s+[0-9.]+ tok/s, uncached\s+[0-9.]+ tok/s -> [0-9.]+x", out)
    assert re.search(r"bandwidth [0-9.]+ GB/s", out) and "achieved" in out
    assert len(re.findall(r"prefill\s+\d+ tokens", out)) == 2
    assert re.search(r"ratio [0-9.]+x", out)
    for label in ("greedy", "defaults"):  # the whole vocabulary, after a real step
        assert re.search(rf"sampling \({label}, \d+ logits\):\s+\d+ us a token after a [0-9.]+ ms step", out)
    assert "[ui]" not in out


@pytest.mark.slow
def test_bench_ui_section_drives_the_app(capsys, parrot_checkpoint):
    assert main(["bench", "--sections", "ui", "--runs", "1", "--ui-checkpoint", str(parrot_checkpoint)]) == 0
    out = capsys.readouterr().out
    for label in ("chat", "stream"):
        engine, app = re.search(rf"\[ui\] {label}: engine alone\s+([0-9.]+) tok/s, app\s+([0-9.]+) tok/s", out).groups()
        assert float(engine) > 0 and float(app) > 0
    assert re.search(r"first frame of `python -m chatterm`: [0-9.]+ s", out)
