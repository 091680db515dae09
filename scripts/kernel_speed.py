"""Speed of chatterm's CPU kernels on GGUF tensors as stored (stored.stored_layer).

For each type: a decode step's product (M = 1) as GB/s of stored weight bytes read, and a
prompt's (M rows at once) as the time per call and rows (tokens) per second, as the layer runs it
(GEMMs on slices of the weight, in bf16 on AMX CPUs), as it ran before (the whole weight widened
to fp32 for one GEMM) and, with --loops, on the decode loops.

    python scripts/kernel_speed.py                  # 2 threads: 2048x8192 at M = 1, 2048x2048 and 8192x2048 at M = 512
    python scripts/kernel_speed.py --threads 1 --cpu-time    # steadier figures on a busy shared machine
    python scripts/kernel_speed.py --types Q4_K Q8_0 --decode-shape 3072 768 --prompt-shapes
    python scripts/kernel_speed.py --variants smollm2 gpt2 --types BF16 Q8_0   # which variant wins, by how much

--variants times every kernel variant this CPU runs on a model's decode-step products (its
shapes, as many of each as the model has, one token), as kernel_choice.choose does at a model's
first step but for longer, and prints them fastest first with how much slower each is. With
--cpu-time (and --threads 1, as the chooser measures) on one thread's CPU clock.

The weights are random stored bytes (the speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chatterm.model.cpu import kernel_choice, native_linear  # noqa: E402
from chatterm.model.cpu.stored import stored_layer  # noqa: E402
from test_kquants import stored  # noqa: E402

TYPES = ["BF16", "F16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_XS"]


CLOCK = time.perf_counter
# (out, in) of one block's fused projections (q/k/v, output, MLP in, MLP out), the number of
# blocks, and the output layer: what one decode step multiplies
MODEL_SHAPES = {
    "smollm2": ([(960, 576), (576, 576), (3072, 576), (576, 1536)], 30, (49152, 576)),  # SmolLM2-135M
    "gpt2": ([(2304, 768), (768, 768), (3072, 768), (768, 3072)], 12, (50257, 768)),  # GPT-2 small
    "llama1b": ([(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)], 16, (128256, 2048)),  # Llama 3.2 1B
}


def variant_speeds(type_name: str, model: str, threads: int, rounds: int) -> None:
    """Every variant on `model`'s decode-step products stored as `type_name`: fastest first."""
    blocks, n_layer, head = MODEL_SHAPES[model]
    groups: dict = {}
    for seed, (n, k) in enumerate([shape for shape in blocks for _ in range(n_layer)] + [head]):
        if type_name in ("Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "IQ4_XS") and k % 256:
            continue
        layer = stored_layer(type_name, stored(type_name, n, k, seed), (n, k), None)
        groups.setdefault((type(layer), n, k), []).append(layer)
    family = next(iter(groups))[0].FAMILY
    kernel_choice.ROUNDS, kernel_choice.MEASURE_BYTES = rounds, 1 << 40  # every layer, more rounds
    kernel_choice.CLOCK = CLOCK
    times = kernel_choice.measure(family, groups, threads)
    fastest = min(times.values())
    ranked = ", ".join(f"{name} {t * 1e3:.2f} ms" + (f" (+{(t / fastest - 1) * 100:.1f}%)" if t > fastest else "")
                       for name, t in sorted(times.items(), key=lambda item: item[1]))
    print(f"{model:8} {type_name:6} ({family}): {ranked}", flush=True)


def timed(fn, seconds: float) -> float:
    """The fastest call of `fn` over about `seconds` of calls: the least disturbed by other work
    on a shared machine."""
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
    parser.add_argument("--variants", nargs="+", choices=sorted(MODEL_SHAPES), metavar="MODEL",
                        help=f"time every kernel variant on these models' decode shapes ({', '.join(MODEL_SHAPES)})")
    parser.add_argument("--rounds", type=int, default=15, help="with --variants: rounds per variant (fastest kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variants:
        print(f"{args.threads} threads; variants this CPU runs: {', '.join(kernel_choice.offered())}")
        with torch.inference_mode():
            for model in args.variants:
                for type_name in args.types:
                    variant_speeds(type_name, model, args.threads, args.rounds)
        return
    if args.cpu_time:
        if args.threads != 1:
            parser.error("--cpu-time measures one thread: give --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    clock = " (CPU time)" if args.cpu_time else ""
    print(f"{args.threads} threads{clock}; decode {args.decode_shape[0]}x{args.decode_shape[1]} (N x K); "
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
                loop = timed(lambda: native_linear.kernel_product(layer, x), args.seconds) if args.loops else None
            line += (f" | {shape} M={args.rows}: {ours * 1e3:6.1f} ms ({args.rows / ours:5.0f} tok/s),"
                     f" whole fp32 {whole * 1e3:6.1f} ms ({args.rows / whole:5.0f} tok/s)"
                     + (f", loops {loop * 1e3:6.1f} ms" if loop else ""))
        print(line, flush=True)


if __name__ == "__main__":
    main()
