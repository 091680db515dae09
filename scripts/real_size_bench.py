"""chatterm against llama.cpp on the same GGUF files, side by side in one run, alternating rounds.

    PYTHONPATH=src python scripts/real_size_bench.py --llama-bin LLAMA_CPP/build/bin FILE.gguf [FILE ...] \
        [--runs 3] [--new-tokens 64] [--prompt-tokens 512] [--busy]

Per file, each figure the median of `--runs` rounds, ours then theirs in every round:
- start: a whole process to its first token, ours `chatterm generate FILE --prompt hi
  --max-new-tokens 1`, theirs `llama-completion -m FILE -p hi -n 1 --no-warmup`; wall time and
  peak resident memory (the child's own ru_maxrss, from wait4), both with a 4096-token window
  (`--context`; chatterm's default cap, where llama.cpp would take the file's 128k);
- decode: ours loaded once in this process as the app loads it (no flags: weights as stored),
  greedy `--new-tokens` after a short prompt; theirs `llama-bench -p 0 -n N`;
- prompt: time to first token after a `--prompt-tokens` prompt (each round a different prompt,
  so no cache is reused), ours; theirs `llama-bench -p N -n 0` as a time;
- with `--busy`: decode again while another process keeps one core busy (both sides see it).
Both sides use the same thread count (torch's, 2 on this machine). Ratios are ours over theirs for
speeds, and ours over theirs for times and memory (lower is better there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_process(cmd: list[str], env=None) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one whole process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr.read().decode(errors='replace')[-400:]}")
    return wall, usage.ru_maxrss / 1024


def llama_bench(binary: Path, path: Path, prompt: int, new: int, threads: int) -> dict:
    cmd = [str(binary), "-m", str(path), "-p", str(prompt), "-n", str(new), "-t", str(threads), "-r", "1", "-o", "json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[0]


def busy_core():
    """Another process spinning on one core until stopped (a browser, a build: a laptop's day)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def median_ratio(ours: list[float], theirs: list[float]) -> str:
    ratios = [a / b for a, b in zip(ours, theirs)]
    return f"{statistics.median(ours):.2f} vs {statistics.median(theirs):.2f} -> {statistics.median(ratios):.2f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-bench and llama-completion")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--context", type=int, default=4096,
                   help="llama.cpp's window (default 4096, chatterm's own cap: the same KV cache on both sides)")
    p.add_argument("--busy", action="store_true", help="also decode with one core kept busy by another process")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: start, decode, prompt")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    from chatterm.engine.generator import Generator
    from chatterm.engine.settings import SamplingSettings
    from chatterm.engine.tokenizers import open_tokenizer
    from chatterm.model import load_checkpoint
    from chatterm.model.cpu import native
    from chatterm.model.cpu.linear import weights_label

    threads = torch.get_num_threads()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# {cpu}, {os.cpu_count()} cores, {threads} threads; chatterm kernels: "
          f"{'built' if native.library() else native.unavailable_reason()}; {args.runs} alternating rounds")
    chatterm = [sys.executable, "-m", "chatterm", "generate"]
    for path in args.files:
        print(f"\n## {path.name} ({path.stat().st_size / 2**20:,.0f} MiB)", flush=True)
        if "start" not in skip:
            ours_t, ours_m, theirs_t, theirs_m = [], [], [], []
            for _ in range(args.runs):
                t, m = run_process([*chatterm, str(path), "--prompt", "hi", "--max-new-tokens", "1", "--temperature", "0"])
                ours_t.append(t)
                ours_m.append(m)
                t, m = run_process([str(args.llama_bin / "llama-completion"), "-m", str(path), "-p", "hi", "-n", "1",
                                    "-t", str(threads), "-c", str(args.context), "--no-warmup", "-no-cnv"])
                theirs_t.append(t)
                theirs_m.append(m)
            print(f"start to first token (s): {median_ratio(ours_t, theirs_t)}")
            print(f"peak resident memory (MB): {median_ratio(ours_m, theirs_m)}", flush=True)
        if skip >= {"decode", "prompt"}:
            continue
        ckpt = load_checkpoint(path, inference=True)
        model = ckpt.model
        gen = Generator(model, open_tokenizer(ckpt.meta.get("tokenizer")))
        print(f"ours: {weights_label(model)}", flush=True)
        settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=args.new_tokens)

        def decode_rounds(label: str) -> None:
            ours, theirs = [], []
            gen.complete(list(range(1000, 1008)), settings)  # warm-up
            for r in range(args.runs):
                ours.append(gen.complete(list(range(2000 + r, 2008 + r)), settings).tokens_per_s)
                theirs.append(float(llama_bench(args.llama_bin / "llama-bench", path, 0, args.new_tokens, threads)["avg_ts"]))
            print(f"decode{label} (tok/s): {median_ratio(ours, theirs)}", flush=True)

        if "decode" not in skip:
            decode_rounds("")
            if args.busy:
                spinner = busy_core()
                try:
                    decode_rounds(", one core busy")
                finally:
                    spinner.kill()
        if "prompt" not in skip:
            ours, theirs = [], []
            one = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=1)
            for r in range(args.runs):
                prompt = [3000 + r + i % 7000 for i in range(args.prompt_tokens)]
                ours.append(gen.complete(prompt, one).ttft_s)
                result = llama_bench(args.llama_bin / "llama-bench", path, args.prompt_tokens, 0, threads)
                theirs.append(args.prompt_tokens / float(result["avg_ts"]))
            print(f"time to first token after {args.prompt_tokens} tokens (s): {median_ratio(ours, theirs)}", flush=True)


if __name__ == "__main__":
    main()
