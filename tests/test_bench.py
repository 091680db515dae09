"""`chatterm bench` runs end to end and prints sane figures (no speed is asserted here)."""

import re

from chatterm.cli import main


def test_bench_prints_every_section(capsys):
    assert main(["bench", "--shape", "tiny", "--runs", "1", "--new-tokens", "8", "--dtypes", "fp32",
                 "--contexts", "16,64", "--no-hf"]) == 0
    out = capsys.readouterr().out
    decode = float(re.search(r"decode\s+([0-9.]+) tok/s", out).group(1))
    assert decode > 0 and "uncached" in out
    assert re.search(r"bandwidth [0-9.]+ GB/s", out) and "achieved" in out
    assert len(re.findall(r"prefill\s+\d+ tokens", out)) == 2
    assert re.search(r"ratio [0-9.]+x", out)
