"""Where a decode step's time goes: torch's profiler over 20 cached decode steps of a model
(default: GPT-2 small shape, random weights, fp32, linears packed as the app runs them).

    python scripts/profile_decode.py [--shape gpt2] [--dtype fp32|bf16|int8|int4] [--unpacked]

Prints ms per token, the achieved read bandwidth of the weights, and the top operators.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from chatterm.bench import bytes_per_token
from chatterm.model import GPT, KVCache, pack_linears, pick_precision, shape


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="gpt2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--unpacked", action="store_true", help="keep F.linear (MKL) for comparison")
    args = parser.parse_args()
    run(args)  # this script is the only thread doing torch work, as the app's torch thread is


def run(args) -> None:
    dtype, bits = pick_precision(args.dtype, torch.device("cpu"))
    model = GPT(shape(args.shape)).init_weights(0).to(dtype).eval()
    if not args.unpacked:
        pack_linears(model, bits)
    weight_bytes = bytes_per_token(model, 0)  # as stored, one row of each lookup table
    cache = KVCache.for_model(model)
    with torch.inference_mode():
        model(torch.arange(32)[None], torch.arange(32), cache)

        def step():  # the cache's length moves on with each write
            model(torch.tensor([[5]]), torch.tensor([cache.length]), cache)

        for _ in range(10):
            step()
        t0 = time.perf_counter()
        for _ in range(40):
            step()
        per_token = (time.perf_counter() - t0) / 40
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                step()
    print(f"{args.shape} {args.dtype} {'unpacked' if args.unpacked else 'packed'}: {per_token * 1e3:.1f} ms/token,"
          f" weights read at {weight_bytes / per_token / 1e9:.1f} GB/s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
