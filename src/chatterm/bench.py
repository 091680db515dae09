"""`chatterm bench`: generation speed, side by side with Hugging Face transformers and with the
memory-bandwidth bound, measured in one run on this machine.

Every figure is the median of `--runs` runs after a warm-up. Sections:
- decode: greedy tokens/s after a short prompt per dtype, first through plain `F.linear`, then
  with the linears packed for oneDNN as the app runs them, and (when transformers is installed)
  `GPT2LMHeadModel.generate` on the same weights, with the ratio;
- uncached: decode tokens/s with ~512 tokens of context, with the KV cache and without;
- bound: bytes read per decoded token (weights as stored + KV cache) / bandwidth measured on the
  spot, per dtype (int8/int4: the weight-only quantized linears, see model/cpu/torch_quantized.py);
- prefill: prompt tokens/s and time to first token at several context lengths;
- turns: time to first token of a chat turn after ~900 vs ~50 tokens of cached history;
- sampling: per decoded token, the time of choosing the next token from the whole vocabulary
  (greedy; the built-in defaults: temperature, top-k, top-p, min-p) beside the step's own, each
  right after a step as in the app (the step leaves the caches cold);
- ui: tokens/s of replies shown by the headless app vs the engine alone (see bench_ui.py);
- llamacpp: decode side by side with llama.cpp's `llama-bench` on the same GGUF files, alternating
  (see bench_llama.py); runs when `--llama-bench PATH` is given or `llama-bench` is on PATH.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

from .bench_llama import DEFAULT_PAIRS, find_llama_bench, llama_cpp_side_by_side

SECTIONS = ("decode", "uncached", "bound", "prefill", "turns", "sampling", "ui", "llamacpp")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure generation speed (vs transformers and the bandwidth bound)")
    p.add_argument("checkpoint", nargs="?", help="checkpoint to measure (default: random weights of --shape)")
    p.add_argument("--shape", default="gpt2", help="named shape for random weights (gpt2, small, ...)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16, int8, int4")
    p.add_argument("--prompt-tokens", type=int, default=32, metavar="N", help="prompt length for decode (default: 32)")
    p.add_argument("--new-tokens", type=int, default=128, metavar="N", help="tokens decoded per run (default: 128)")
    p.add_argument("--contexts", default="64,256,900", help="prefill lengths (default: 64,256,900)")
    p.add_argument("--runs", type=int, default=3, metavar="N", help="runs per figure, after a warm-up; the median is shown (default: 3)")
    p.add_argument("--sections", default=",".join(SECTIONS), metavar="NAMES",
                   help=f"comma-separated sections to run, from: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--ui-checkpoint", metavar="PATH", help="model for the UI section (default: the default model)")
    p.add_argument("--llama-bench", metavar="PATH", help="llama.cpp's llama-bench binary (default: on PATH)")
    p.add_argument("--llama-pairs", default=DEFAULT_PAIRS, help=f"our dtype:their GGUF type, comma-separated (default: {DEFAULT_PAIRS})")
    p.add_argument("--gguf-dir", help="where the GGUF files for llama.cpp are written and reused (default: a temp dir)")
    p.set_defaults(func=run)


def _median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(args, dtype):
    import torch

    from .model import GPT, load_checkpoint, shape

    if args.checkpoint:  # plain layers in `dtype`, packed by the caller as for the built shapes
        from .model.device import dtype_name

        return load_checkpoint(args.checkpoint, device=args.device, precision=dtype_name(dtype or torch.float32)).model
    torch.manual_seed(0)
    return GPT(shape(args.shape)).init_weights(0).to(args.device, dtype).eval()


def _bandwidth_gbs() -> float:
    """Read bandwidth: sum a buffer far larger than the caches, median of 5."""
    import torch

    x = torch.ones(256 * 2**20 // 4)  # 256 MiB of fp32
    t = _median_time(lambda: x.sum().item(), 5)
    return x.nbytes / t / 1e9


def _uncached(model, prompt, n):
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(n):
            nxt = model(ids)[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids


def _hf_model(model):
    """transformers' GPT2LMHeadModel holding exactly our weights (Conv1D weights transposed)."""
    import transformers

    c = model.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        layer_norm_epsilon=c.layer_norm_eps, attn_implementation="sdpa"))
    from .model.formats.state_dicts import HF_CONV1D_WEIGHTS

    sd = {k: (v.t() if k.endswith(HF_CONV1D_WEIGHTS) else v) for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=False)
    return hf.to(next(model.parameters()).dtype).eval()


def run(args) -> int:
    from .cli.errors import UserError
    from .engine import torch_thread
    from .model.device import pick_device

    try:  # a bad --device is one line here, not a torch traceback from the first model built
        args.device = str(pick_device(args.device))
    except ValueError as e:
        raise UserError(str(e)) from None

    # All torch work on the one thread the app uses for it (see engine/torch_thread.py). The UI
    # section runs the app here, and the app sends its own torch work to that thread.
    torch_thread.call(_run, args)
    if "ui" in args.sections.split(","):
        from .bench_ui import ui_vs_engine

        ui_vs_engine(args.ui_checkpoint, runs=args.runs)
    return 0


def _run(args) -> None:
    import torch

    from .engine.generator import Generator
    from .engine.tokenizer import Tokenizer
    from .model import pack_linears, pick_precision
    from .model.cpu.linear import linear_kinds

    sections = set(args.sections.split(","))
    tok = Tokenizer.gpt2()
    prompt = list(range(100, 100 + args.prompt_tokens))
    print(f"chatterm bench: {args.checkpoint or args.shape} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.runs} runs after a warm-up")
    for name in args.dtypes.split(",") if sections - {"ui", "llamacpp"} else ():
        dtype, bits = pick_precision(name, torch.device(args.device))
        model = _model(args, dtype)
        tokenizer = tok if model.config.vocab_size >= tok.n_vocab else _ids_tokenizer(model)
        hf = _hf_model(model) if "decode" in sections and not args.no_hf and _has_transformers() else None
        if "decode" in sections:  # the same weights through plain F.linear, before packing
            plain = _greedy(Generator(model, tokenizer), prompt, args.new_tokens, args.runs)
            print(f"[{name}] decode {plain.tokens_per_s:7.1f} tok/s with F.linear (unpacked)")
        pack_linears(model, bits)  # what the app does after loading (a no-op off the CPU)
        gen = Generator(model, tokenizer)
        ours = None
        if "decode" in sections:
            ours = _greedy(gen, prompt, args.new_tokens, args.runs)
            how = linear_kinds(model)
            print(f"[{name}] decode {ours.tokens_per_s:7.1f} tok/s (cached, {args.new_tokens} new after {len(prompt)}"
                  f", {how})")
            if hf is not None:
                _compare_hf(hf, prompt, args, ours, name)
            elif not args.no_hf:
                print("  (transformers not installed: pip install 'chatterm[bench]' for the side-by-side)")
        if "uncached" in sections and name == "fp32":
            _cached_vs_uncached(gen, args)
        if "bound" in sections:
            bw = _bandwidth_gbs()
            per_token = bytes_per_token(model, len(prompt) + args.new_tokens / 2)
            bound = bw * 1e9 / per_token
            achieved = f"; achieved {ours.tokens_per_s / bound:.0%} of it" if ours else ""
            print(f"[{name}] bandwidth {bw:.1f} GB/s, {per_token / 1e6:.0f} MB read per token -> bound {bound:.1f} tok/s"
                  + achieved)
        if "prefill" in sections:
            for n in [int(c) for c in args.contexts.split(",") if int(c) < model.config.block_size]:
                ids = [(7 * i) % 250 for i in range(n)]
                def fresh():
                    gen.reset()
                    gen.prefill(ids)
                t = _median_time(fresh, args.runs)
                print(f"[{name}] prefill {n:4d} tokens: {n / t:8.0f} tok/s, time to first token {t * 1000:6.1f} ms")
        if "turns" in sections and name == "fp32":
            _turns(gen, args)
        if "sampling" in sections:
            _sampling(gen, prompt, args, name)
    if "llamacpp" in sections:
        binary = find_llama_bench(args.llama_bench)
        if binary is None:
            print("[llama.cpp] no llama-bench found: pass --llama-bench PATH for the side-by-side")
        else:
            llama_cpp_side_by_side(args, binary, lambda m: tok if m.config.vocab_size >= tok.n_vocab else _ids_tokenizer(m))


def bytes_per_token(model, context: float) -> float:
    """Bytes a decode step reads: every weight as stored (packed, int8, int4), except lookup
    tables that read one row (position and untied token embeddings, rotary tables), plus the KV
    cache at `context` positions."""
    import torch.nn as nn

    projections = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}  # a tied one is read whole
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - projections
    tensors = {id(t): t for _, t in [*model.named_parameters(), *model.named_buffers()]}
    weights = sum(t.numel() * t.element_size() for key, t in tensors.items()
                  if key not in lookups and t.dim() > 0 and t.numel() > 1)
    weights -= sum(t.numel() * t.element_size() for n, t in model.named_buffers() if "rope" in n)
    c = model.config
    kv_width = getattr(c, "n_kv_head", c.n_head) * (c.n_embd // c.n_head)
    kv_dtype = next(model.parameters()).element_size()
    return weights + 2 * c.n_layer * kv_width * context * kv_dtype


def _greedy(gen, prompt, n, runs):
    """Median-of-`runs` greedy completion of `prompt` (by decode speed), after a warm-up."""
    from .engine.settings import SamplingSettings

    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=n)
    gen.complete(prompt, settings)
    results = sorted((gen.complete(prompt, settings) for _ in range(runs)), key=lambda d: d.tokens_per_s)
    return results[len(results) // 2]


def _sampling(gen, prompt, args, name):
    """The time `sample` takes per token over the whole vocabulary, greedy and at the built-in
    defaults, each right after a decode step of this model (medians over --new-tokens steps)."""
    from .engine.sampling import new_rng, sample
    from .engine.settings import SamplingSettings

    gen.prefill(prompt)
    token = prompt[-1]
    for label, settings in (("greedy", SamplingSettings(temperature=0)), ("defaults", SamplingSettings())):
        rng, steps, picks = new_rng(0), [], []
        for _ in range(args.new_tokens):  # past the window: back to the prompt (as a refit would)
            if len(gen.cached_ids) >= gen.context_window:
                gen.prefill(prompt)
            t0 = time.perf_counter()
            logits = gen.decode(token)
            t1 = time.perf_counter()
            token = sample(logits, (), settings, rng).token_id
            t2 = time.perf_counter()
            steps.append(t1 - t0)
            picks.append(t2 - t1)
        step, pick = statistics.median(steps), statistics.median(picks)
        print(f"[{name}] sampling ({label}, {logits.numel()} logits): {pick * 1e6:6.0f} us a token after a "
              f"{step * 1e3:.2f} ms step ({pick / step:.1%} of it)")


def _cached_vs_uncached(gen, args):
    """Decode speed with ~512 tokens in context: the KV cache vs re-running the whole sequence."""
    total, n = min(512, gen.context_window), 16
    prompt = [(5 * i) % 250 for i in range(total - n)]
    cached = _greedy(gen, prompt, n, args.runs).tokens_per_s
    t = _median_time(lambda: _uncached(gen.model, prompt, n), max(1, args.runs - 1))
    print(f"[fp32] at {total} tokens of context: cached {cached:6.1f} tok/s, uncached {n / t:6.1f} tok/s"
          f" -> {cached * t / n:.1f}x")


def _ids_tokenizer(model):
    """For random small shapes: a byte-level tokenizer (speed does not depend on the vocabulary's
    contents, and prompts here are plain ids)."""
    from .engine.tokenizer import Tokenizer

    ranks = [bytes([i]) for i in range(256)]
    return Tokenizer.bpe(Tokenizer.bpe_spec(ranks, {"<|endoftext|>": 256}))


def _has_transformers() -> bool:
    try:
        importlib.import_module("transformers")
    except ImportError:
        return False
    return True


def _compare_hf(hf, prompt, args, ours, name):
    import torch

    ids = torch.tensor([prompt])
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        t = _median_time(lambda: hf.generate(ids, **kwargs), args.runs)
        theirs_ids = hf.generate(ids, **kwargs)[0, len(prompt):].tolist()
    theirs = args.new_tokens / t
    same = sum(a == b for a, b in zip(theirs_ids, ours.token_ids)) / max(1, len(ours.token_ids))
    print(f"[{name}] transformers generate {theirs:7.1f} tok/s (end to end) -> ours/theirs {ours.tokens_per_s / theirs:.2f}x;"
          f" same greedy tokens: {same:.0%}")


def _turns(gen, args):
    long = [(11 * i) % 250 for i in range(min(900, gen.context_window - 40))]
    base = long[:50]

    def turn(history):
        gen.reset()
        gen.prefill(history)  # the earlier turns, cached
        t0 = time.perf_counter()
        gen.prefill(history + list(range(10, 30)))  # the new turn: only its tokens are computed
        return time.perf_counter() - t0

    short_t = statistics.median(turn(base) for _ in range(args.runs))
    long_t = statistics.median(turn(long) for _ in range(args.runs))
    print(f"[fp32] turn TTFT with cached history: {len(base)} tokens {short_t * 1000:.1f} ms, "
          f"{len(long)} tokens {long_t * 1000:.1f} ms -> ratio {long_t / short_t:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m chatterm.bench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["bench", *__import__("sys").argv[1:]])
    raise SystemExit(a.func(a))
