"""Which variant of each CPU kernel family a model runs: the one measured fastest on its shapes.

The kernel library (native/) holds every variant of the matrix-vector loops this CPU runs (AVX2,
AVX-VNNI, AVX-512 with and without VNNI, 256 or 512 bits wide, one or two weight rows a pass:
common.h's CT_VARIANT_LIST), and each family (bf16, f16, q8, q4, iq4nl, kq) calls through the
one chosen for it. `choose(model)` picks, for each family the model's layers use, the variant
that runs the model's own decode-step products fastest (one token; every shape weighted by how
often a step runs it). Why measure: the widest loop is not always the fastest (Zen 4 runs
512-bit instructions as two halves; on the AVX-512 Xeon the 256-bit K-quant loops beat the
512-bit ones by 15-18%, BENCHMARKS.md), and no rule written today knows tomorrow's CPU. So no
variant is used where another measured faster.

The measurement takes a few ms per variant (a pass over up to MEASURE_BYTES of each shape's
weights, ROUNDS times, variants interleaved, the fastest round kept) on one thread's CPU clock:
on a busy machine (2 cores, other processes) wall-clock times at two threads swung by 2x between
identical variants, one thread's CPU time by under 5% (measured on the 2-core Xeon,
scripts/kernel_speed.py --variants). The variants differ in their inner loops, which threads
split alike, so one thread ranks them as the model's thread count does. The choice is cached
in `kernel-choices.json` beside the compiled library, keyed by the CPU (its model name and a
hash of its flags), the library build, the thread count measured at, the family and the shapes:
later loads read it and time nothing. A cache that cannot be read or holds anything unexpected
is ignored (and rewritten); it is written atomically. `CHATTERM_KERNELS=<variant>` (every
family) or `q8=<variant>,bf16=<variant>` forces variants (tests, benchmarks) and skips the cache.
"""

from __future__ import annotations

import copy
import json
import os
import time

import torch

from ...atomic import atomic_write
from . import native
from .native_linear import NativeLinear, StackedLinear

FAMILIES = ("bf16", "f16", "q8", "q4", "iq4nl", "kq")  # common.h's CT_FAMILY_* order
ENV = "CHATTERM_KERNELS"
CACHE_NAME = "kernel-choices.json"
ROUNDS = 3
MEASURE_BYTES = 16 << 20  # of each shape's weights per pass: a few ms, and more than the L2 cache holds
FALLBACK = "scalar"  # the portable C: timed only where nothing else runs
CLOCK = time.thread_time  # see the module docstring


def offered() -> list[str]:
    """The variants this CPU runs, in the library's order of preference ([] without the library)."""
    lib = native.library()
    if lib is None:
        return []
    return [lib.ct_variant_name(i).decode() for i in range(lib.ct_variant_count()) if lib.ct_variant_supported(i)]


def current(family: str) -> str:
    """The variant `family` runs now."""
    lib = native.library()
    return lib.ct_variant_name(lib.ct_variant_get(FAMILIES.index(family))).decode()


def use(family: str, variant: str) -> None:
    """Run `family` on `variant`; ValueError where this CPU does not run it."""
    lib = native.library()
    names = [lib.ct_variant_name(i).decode() for i in range(lib.ct_variant_count())]
    if family not in FAMILIES:
        raise ValueError(f"no kernel family {family!r} (families: {', '.join(FAMILIES)})")
    if variant not in names or lib.ct_variant_set(FAMILIES.index(family), names.index(variant)) != 0:
        raise ValueError(f"kernel variant {variant!r} does not run on this CPU (offered: {', '.join(offered())})")


def choose(model: torch.nn.Module, threads: int = 1) -> dict[str, str]:
    """Set each kernel family `model` uses to its fastest variant (forced, cached or measured)
    and return {family: variant}; {} where the model uses none of chatterm's kernels."""
    if native.library() is None:
        return {}
    groups = layer_groups(model)
    if not groups:
        return {}
    forced = forced_variants()
    if forced is not None:
        for family, variant in forced.items():
            use(family, variant)
        return {family: current(family) for family in groups}
    choices = _read_cache()
    keys = {family: _cache_key(family, shapes, threads) for family, shapes in groups.items()}
    names = offered()
    missing = {family: shapes for family, shapes in groups.items() if choices.get(keys[family]) not in names}
    for family, shapes in missing.items():
        timings = measure(family, shapes, threads)
        choices[keys[family]] = min(timings, key=timings.get)
    for family in groups:
        use(family, choices[keys[family]])
    if missing:
        _write_cache(choices)
    return {family: choices[keys[family]] for family in groups}


def forced_variants() -> dict[str, str] | None:
    """CHATTERM_KERNELS as {family: variant} (None when unset); ValueError where it names no
    variant this CPU runs or no family."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    names = offered()
    if "=" not in text:
        if text not in names:
            raise ValueError(f"{ENV}={text}: no such kernel variant runs on this CPU (offered: {', '.join(names)})")
        return dict.fromkeys(FAMILIES, text)
    forced = {}
    for part in text.split(","):
        family, _, variant = (s.strip() for s in part.partition("="))
        if family not in FAMILIES or variant not in names:
            raise ValueError(f"{ENV}: {part.strip()!r} is not family=variant with a family of {', '.join(FAMILIES)} "
                             f"and a variant of {', '.join(names)}")
        forced[family] = variant
    return forced


def layer_groups(model: torch.nn.Module) -> dict[str, dict[tuple, list[NativeLinear]]]:
    """{family: {(layer class, out, in): [layers]}} of the kernel layers in `model`."""
    groups: dict[str, dict[tuple, list[NativeLinear]]] = {}
    for module in model.modules():
        if isinstance(module, StackedLinear):
            continue  # its parts are visited as modules of their own
        if isinstance(module, NativeLinear) and module.FAMILY:
            shape = (type(module), module.out_features, module.in_features)
            groups.setdefault(module.FAMILY, {}).setdefault(shape, []).append(module)
    return groups


def measure(family: str, shapes: dict[tuple, list[NativeLinear]], threads: int) -> dict[str, float]:
    """{variant: seconds} of one decode step's products of `family` (each shape's layers, one
    token) on every variant this CPU runs (the portable C only where nothing else does)."""
    names = [name for name in offered() if name != FALLBACK] or offered()
    before = current(family)
    samples = []
    for layers in shapes.values():
        take, size = [], 0
        for layer in layers:  # different weights of one shape: read from memory, as a step reads them
            part, weight = _first_rows(layer, MEASURE_BYTES)
            take.append(part)
            size += _bytes(part)
            if size >= MEASURE_BYTES:
                break
        x = torch.randn(1, take[0].in_features, generator=torch.Generator().manual_seed(0))
        samples.append((take, weight * len(layers) / len(take), x, torch.empty(1, take[0].out_features)))
    best = dict.fromkeys(names, float("inf"))
    try:
        for round_ in range(ROUNDS):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # each round starts elsewhere
                use(family, name)
                total = 0.0
                for take, weight, x, y in samples:
                    start = CLOCK()
                    for layer in take:
                        layer._matvec(x, None, y, 1, threads)
                    total += (CLOCK() - start) * weight
                best[name] = min(best[name], total)
    finally:
        use(family, before)
    return best


def _bytes(layer: NativeLinear) -> int:
    return sum(t.numel() * t.element_size() for t in layer.buffers() if t is not None)


def _first_rows(layer: NativeLinear, most: int) -> tuple[NativeLinear, float]:
    """`layer`, or where it holds more than `most` bytes (a large output layer) a layer of its
    first rows (views, no copy) holding about that much, and how many times that is the whole."""
    total = _bytes(layer)
    if total <= most:
        return layer, 1.0
    rows = max(16, layer.out_features * most // total)
    part = copy.copy(layer)
    part._buffers = {name: None if t is None else t[:rows] for name, t in layer._buffers.items()}
    part.out_features = rows
    return part, layer.out_features / rows


def _cache_key(family: str, shapes: dict[tuple, list], threads: int) -> str:
    sizes = ",".join(sorted(f"{kind.__name__}:{n}x{k}*{len(layers)}" for (kind, n, k), layers in shapes.items()))
    return f"{native.cpu_identity()}|{native.build_name()}|threads={threads}|{family}|{sizes}"


def _cache_path():
    return native.cache_dir() / CACHE_NAME


def _read_cache() -> dict[str, str]:
    """The cached choices, or {} where the file is missing, unreadable or not what we write."""
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("choices"), dict):
        return {}
    choices = data["choices"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in choices.items()):
        return {}
    return dict(choices)


def _write_cache(choices: dict[str, str]) -> None:
    text = json.dumps({"version": 1, "choices": choices}, indent=1, sort_keys=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    try:
        atomic_write(_cache_path(), write, new_mode=0o644)
    except OSError:
        pass  # a read-only cache folder: measured again next time, nothing lost
