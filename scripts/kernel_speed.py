"""Speed of chatterm's CPU kernels on GGUF tensors as stored (native_linear.stored_layer).

For each type: a decode step's product (M = 1) as GB/s of stored weight bytes read, and a
prompt's (M rows at once) as the time per call and rows (tokens) per second, as the layer runs it
(GEMMs on slices of the weight, in bf16 on AMX CPUs), as it ran before (the whole weight widened
to fp32 for one GEMM) and, with --loops, on the decode loops.

    python scripts/kernel_speed.py                       # 2048x8192 at M = 1, 2048x2048 and 8192x2048 at M = 512
    python scripts/kernel_speed.py --threads 2 --types Q4_K Q8_0 --shape 4096 4096

The weights are random stored bytes (the speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chatterm.model import native_linear  # noqa: E402
from chatterm.model.native_linear import stored_layer  # noqa: E402
from test_kquants import stored  # noqa: E402

TYPES = ["BF16", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K"]


CLOCK = time.perf_counter


def timed(fn, seconds: float) -> float:
    """The fastest call of `fn` over about `seconds` of calls (the least disturbed by other work on a shared machine)."""
    fn()
    times, spent = [], 0.0
    while spent < seconds or len(times) < 5:
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
        spent += times[-1]
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-shape", nargs=2, type=int, default=[2048, 8192], metavar=("N", "K"))
    parser.add_argument("--prompt-shapes", nargs="*", default=["2048x2048", "8192x2048"])
    parser.add_argument("--rows", type=int, default=512, help="M of the prompt products")
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    parser.add_argument("--loops", action="store_true", help="also time the decode loops on the prompt's rows")
    parser.add_argument("--cpu-time", action="store_true",
                        help="with --threads 1: time on this thread's CPU clock (steady on a busy shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cpu_time:
        if args.threads != 1:
            parser.error("--cpu-time measures one thread: give --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    print(f"{args.threads} threads{' (CPU time)' if args.cpu_time else ''}; decode {args.decode_shape[0]}x{args.decode_shape[1]} (N x K); "
          f"prompts of {args.rows} rows")
    for type_name in args.types:
        n, k = args.decode_shape
        raw = stored(type_name, n, k)
        layer = stored_layer(type_name, raw, (n, k), None)
        x = torch.randn(1, k)
        with torch.inference_mode():
            t = timed(lambda: layer(x), args.seconds)
        line = f"{type_name:5} M=1: {t * 1e6:7.0f} us {raw.nbytes / t / 1e9:6.1f} GB/s"
        for shape in args.prompt_shapes:
            n, k = map(int, shape.split("x"))
            layer = stored_layer(type_name, stored(type_name, n, k), (n, k), None)
            x = torch.randn(args.rows, k)
            with torch.inference_mode():
                ours = timed(lambda: layer(x), args.seconds)  # slices of the weight, GEMMs in PROMPT_DTYPE
                whole = timed(lambda: torch.nn.functional.linear(x, layer.dequantized()), args.seconds)  # before
                loop = timed(lambda: native_linear.prompt_product(layer, x), args.seconds) if args.loops else None
            line += (f" | {shape} M={args.rows}: {ours * 1e3:6.1f} ms ({args.rows / ours:5.0f} tok/s),"
                     f" whole fp32 {whole * 1e3:6.1f} ms ({args.rows / whole:5.0f} tok/s)"
                     + (f", loops {loop * 1e3:6.1f} ms" if loop else ""))
        print(line, flush=True)


if __name__ == "__main__":
    main()
