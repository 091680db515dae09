"""The CPU kernels' variants (native/variant.c, model/cpu/kernel_choice.py): every variant this CPU
runs computes what the portable C computes on shapes that reach every loop's tail, only variants
the CPU runs are offered, and the chooser measures, caches, reads its cache back, ignores a
broken one and honours CHATTERM_KERNELS."""

import json

import pytest
import torch
import torch.nn as nn

from chatterm.model.cpu import kernel_choice, native
from chatterm.model.cpu.native_linear import Bf16Linear, Q4Linear, Q8Linear
from chatterm.model.cpu.stored import stored_layer

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")
gguf = pytest.importorskip("gguf")
from test_kquants import K_QUANTS, stored  # noqa: E402  (needs gguf)
from test_native_kernels import _decode, reference_q8  # noqa: E402

# /proc/cpuinfo's names of what each variant was compiled for (native.VARIANTS' flags)
NEEDS = {"avx512vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"},
         "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
         "avxvnni": {"avx2", "fma", "f16c", "avx_vnni"}, "avx2": {"avx2", "fma", "f16c"}, "scalar": set()}
NEEDS["avx512vnni_1row"] = NEEDS["avx512vnni_256"] = NEEDS["avx512vnni"]
NEEDS["avx2_1row"] = NEEDS["avx2"]


@pytest.fixture(autouse=True)
def _variants_restored():
    """Each test leaves every family on the variant it found."""
    before = {family: kernel_choice.current(family) for family in kernel_choice.FAMILIES}
    yield
    for family, variant in before.items():
        kernel_choice.use(family, variant)


def _layers():
    """One layer of every family, on shapes with every loop's tail: 37 rows (the paired-row
    loops' last one), 96 or 800 inputs (blocks of 32 past the last group of 4; 3 super-blocks)."""
    torch.manual_seed(0)
    layers = {"Q8": Q8Linear.from_linear(nn.Linear(96, 37)), "Q4": Q4Linear.from_linear(nn.Linear(96, 37)),
              "BF16": Bf16Linear.from_linear(nn.Linear(96, 37).to(torch.bfloat16))}
    for type_name in ("F16", "IQ4_NL", *K_QUANTS):
        k = 768 if type_name in K_QUANTS else 96
        layers[type_name] = stored_layer(type_name, stored(type_name, 37, k), (37, k), None)
    return layers


def test_every_variant_computes_what_the_portable_c_computes():
    offered = kernel_choice.offered()
    assert "scalar" in offered and len(offered) >= 1
    for type_name, layer in _layers().items():
        for rows in (1, 3):
            x = torch.randn(rows, layer.in_features, generator=torch.Generator().manual_seed(rows))
            kernel_choice.use(layer.FAMILY, "scalar")
            with torch.inference_mode():
                portable = layer(x)
                for variant in offered:
                    kernel_choice.use(layer.FAMILY, variant)
                    got = layer(x)
                    scale = float(portable.abs().max())
                    assert torch.allclose(got, portable, rtol=1e-5, atol=1e-5 * scale), (type_name, variant, rows)
                    if type_name == "Q8":  # and the block integer arithmetic itself, on every variant
                        assert torch.allclose(got.double(), reference_q8(layer, x), rtol=1e-5, atol=1e-5 * scale)


def test_only_variants_this_cpu_runs_are_offered():
    lib = native.library()
    built = [lib.ct_variant_name(i).decode() for i in range(lib.ct_variant_count())]
    assert set(built) <= set(native.VARIANTS)
    flags = set()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        flags = next((set(line.split()) for line in f if line.startswith("flags")), set())
    assert kernel_choice.offered() == [name for name in built if NEEDS[name] <= flags]
    assert lib.ct_variant_set(0, len(built)) == -1 and lib.ct_variant_set(0, -1) == -1
    assert lib.ct_variant_set(len(kernel_choice.FAMILIES), 0) == -1
    with pytest.raises(ValueError, match="does not run on this CPU"):
        kernel_choice.use("q8", "avx1024")


def _model():
    torch.manual_seed(1)
    return nn.Sequential(Q8Linear.from_linear(nn.Linear(64, 96)), Q8Linear.from_linear(nn.Linear(96, 64)),
                         Q8Linear.from_linear(nn.Linear(96, 64)), Bf16Linear.from_linear(nn.Linear(64, 32)))


def test_chooser_measures_caches_and_reads_the_cache_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    measured = []
    real_measure = kernel_choice.measure
    monkeypatch.setattr(kernel_choice, "measure", lambda *a: measured.append(a[0]) or real_measure(*a))
    model = _model()
    chosen = kernel_choice.choose(model, threads=1)
    assert sorted(measured) == ["bf16", "q8"] and set(chosen) == {"bf16", "q8"}
    assert all(kernel_choice.current(family) == variant for family, variant in chosen.items())
    if len(kernel_choice.offered()) > 1:
        assert "scalar" not in chosen.values()  # the portable fallback is never timed beside vector code
    cache = json.loads((tmp_path / "kernels" / kernel_choice.CACHE_NAME).read_text())
    assert sorted(cache["choices"].values()) == sorted(chosen.values())
    assert all("threads=1" in key and "Q8Linear:64x96*2" in key for key in cache["choices"] if "|q8|" in key)

    for family in chosen:  # moved away, then read back from the cache, nothing timed again
        kernel_choice.use(family, "scalar")
    measured.clear()
    assert kernel_choice.choose(model, threads=1) == chosen and measured == []
    assert all(kernel_choice.current(family) == variant for family, variant in chosen.items())
    assert kernel_choice.choose(model, threads=2) and sorted(measured) == ["bf16", "q8"]  # another key: measured


@pytest.mark.parametrize("broken", ["{not json", "[1, 2]", '{"version": 1, "choices": {"a": 3}}', "\x00\xff"])
def test_a_broken_cache_is_ignored_and_rewritten(monkeypatch, tmp_path, broken):
    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    path = tmp_path / "kernels" / kernel_choice.CACHE_NAME
    path.parent.mkdir(parents=True)
    path.write_text(broken, encoding="latin-1")
    chosen = kernel_choice.choose(_model(), threads=1)
    assert set(json.loads(path.read_text())["choices"].values()) == set(chosen.values())


def test_a_cached_variant_this_cpu_does_not_offer_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    model = _model()
    kernel_choice.choose(model, threads=1)
    path = tmp_path / "kernels" / kernel_choice.CACHE_NAME
    data = json.loads(path.read_text())
    data["choices"] = {key: "avx1024" for key in data["choices"]}
    path.write_text(json.dumps(data))
    chosen = kernel_choice.choose(model, threads=1)
    assert set(chosen.values()) <= set(kernel_choice.offered())
    assert "avx1024" not in path.read_text()


def test_the_environment_forces_a_variant(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path))
    model = _model()
    last = kernel_choice.offered()[-1]
    monkeypatch.setenv(kernel_choice.ENV, last)
    assert kernel_choice.choose(model) == {"q8": last, "bf16": last}
    assert not (tmp_path / "kernels" / kernel_choice.CACHE_NAME).exists()  # forcing neither reads nor writes it
    first = kernel_choice.offered()[0]
    monkeypatch.setenv(kernel_choice.ENV, f"q8={first}, bf16={last}")
    assert kernel_choice.choose(model) == {"q8": first, "bf16": last}
    for bad in ("avx1024", "q8=avx1024", "q9=scalar", "q8"):
        monkeypatch.setenv(kernel_choice.ENV, bad)
        with pytest.raises(ValueError, match=kernel_choice.ENV):
            kernel_choice.choose(model)


def test_a_fused_decode_step_runs_on_the_chosen_variants(parrot, monkeypatch, tmp_path):
    """The first fused step chooses (and caches); the model decodes the same on every variant."""
    import copy

    from chatterm.model import pack_linears

    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    model = copy.deepcopy(parrot[0])
    pack_linears(model, 8)
    want = _decode(model, [5, 6, 7], 10)[0]
    assert (tmp_path / "kernels" / kernel_choice.CACHE_NAME).exists()
    for variant in kernel_choice.offered():
        monkeypatch.setenv(kernel_choice.ENV, variant)
        twin = copy.deepcopy(model)  # a new model: its first fused step sets the forced variant
        assert _decode(twin, [5, 6, 7], 10)[0] == want, variant
        assert kernel_choice.current("q8") == variant


def test_a_large_layer_is_measured_on_its_first_rows():
    """An output layer of a large vocabulary is timed on a slice of rows (views), scaled up."""
    layer = Q8Linear.from_linear(nn.Linear(64, 512))
    part, times = kernel_choice._first_rows(layer, kernel_choice._bytes(layer) // 4)
    assert (part.out_features, times, layer.out_features) == (128, 4.0, 512)
    assert part.weight.data_ptr() == layer.weight.data_ptr()  # no copy
    x = torch.randn(1, 64)
    with torch.inference_mode():
        assert torch.equal(part(x), layer(x)[:, :128])
    assert kernel_choice._first_rows(layer, kernel_choice._bytes(layer)) == (layer, 1.0)


@pytest.mark.slow  # three variants built: ~5 s
def test_a_variant_the_compiler_cannot_build_is_left_out(tmp_path, monkeypatch):
    import ctypes

    monkeypatch.setattr(native, "VARIANTS", {"avx2": native.VARIANTS.get("avx2", []),
                                             "avxvnni": ["-mno-such-flag"], "scalar": []})
    path = tmp_path / "partial.so"
    native._build(native._compiler(), path)
    lib = native.declare(ctypes.CDLL(str(path)))
    names = [lib.ct_variant_name(i).decode() for i in range(lib.ct_variant_count())]
    assert names == ["avx2", "scalar"] if "avx2" in native.VARIANTS else names == ["scalar"]
    assert all(lib.ct_variant_get(family) == 0 for family in range(len(kernel_choice.FAMILIES)))
