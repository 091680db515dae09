"""chatterm's own CPU kernels (model/cpu/native/kernels.c, model/cpu/native_linear.py): each layer computes
what an independent torch reference of the same arithmetic computes, the portable scalar build
agrees with the AVX2 one, Q8_0/Q4 weights from GGUF go back on their own grid, a bf16 model runs
its linears in bf16 and the rest in fp32, and without a compiler chatterm keeps PyTorch's kernels."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from chatterm.model import pack_linears
from chatterm.model.cpu import native
from chatterm.model.cpu.linear import TiedEmbedding
from chatterm.model.cpu.native_linear import GEMV_ROWS, PROMPT_DTYPE, Bf16Linear, Q4Linear, Q8Linear, quantize_q8
from chatterm.model.cpu.torch_quantized import Int8Linear, quantize_int4

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")


def linear(n_in, n_out, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def quantized_activations(x):
    """x (M, K) -> the per-block int8 values and scales the kernels use (llama.cpp's Q8_0)."""
    blocks = x.view(x.size(0), -1, 32)
    d = blocks.abs().amax(-1) / 127
    q = torch.round(blocks / torch.where(d > 0, d, 1)[..., None]).clamp(-127, 127)
    return q, d


def reference_q8(layer, x):
    """The Q8 kernel's arithmetic in float64 torch: integer dot per block, times both scales."""
    n = layer.out_features
    qx, dx = quantized_activations(x)
    qw = layer.weight.view(n, -1, 32).double()
    dw = layer.scale.view(torch.float16).double()
    dots = torch.einsum("nbi,mbi->mnb", qw, qx.double())  # exact integers
    y = (dots * dw[None] * dx.double()[:, None]).sum(-1)
    return y + (layer.bias.double() if layer.bias is not None else 0)


def reference_q4(layer, x):
    """The Q4 kernel's arithmetic: sum_b d_b dx_b (q . xq) + m_b dx_b sum(xq)."""
    qx, dx = quantized_activations(x)
    w = layer.dequantized().double().view(layer.out_features, -1, 32)
    d = layer.scale.view(torch.float16).double()
    m = layer.offset.view(torch.float16).double()
    q = (w - m[..., None]) / torch.where(d != 0, d, 1)[..., None]  # the stored 0..15 values
    dots = torch.einsum("nbi,mbi->mnb", q.round(), qx.double())
    y = (dots * d[None] * dx.double()[:, None]).sum(-1) + (m[None] * (qx.double().sum(-1) * dx.double())[:, None]).sum(-1)
    return y + (layer.bias.double() if layer.bias is not None else 0)


# Widths of 8, 7 and 18 blocks: the SIMD loops take 4 and 2 blocks a step, then one at a time.
WIDTHS = [256, 224, 576]


@pytest.mark.parametrize("n_in", WIDTHS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, GEMV_ROWS])
def test_q8_kernel_is_the_block_integer_arithmetic(bias, rows, n_in):
    layer = Q8Linear.from_linear(linear(n_in, 73, bias))  # an odd row count: rows go in pairs
    x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        got = layer(x).double()
    want = reference_q8(layer, x)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())


@pytest.mark.parametrize("n_in", WIDTHS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, GEMV_ROWS])
def test_q4_kernel_is_the_block_integer_arithmetic(bias, rows, n_in):
    layer = Q4Linear.from_linear(linear(n_in, 73, bias))
    x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        got = layer(x).double()
    want = reference_q4(layer, x)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())


@pytest.mark.parametrize("n_in", [256, 100])  # bf16 takes any width: a scalar tail after 32s
@pytest.mark.parametrize("rows", [1, 2, GEMV_ROWS + 1])
def test_bf16_kernel_computes_the_bf16_weight_matmul(n_in, rows):
    source = linear(n_in, 72)
    layer = Bf16Linear.from_linear(source)
    x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = layer(x)
        want = F.linear(x.double(), source.weight.to(torch.bfloat16).double(), source.bias.double())
    assert got.dtype == torch.float32 and got.shape == (rows, 72)
    tolerance = 1e-5 * float(want.abs().max())
    if rows > layer.GEMM_ABOVE and PROMPT_DTYPE == torch.bfloat16:  # a prompt on AMX: x rounded to bf16 too
        tolerance = 2 ** -9 * float((x.abs() @ source.weight.detach().abs().T).max())
    assert float((got - want).abs().max()) < tolerance


@pytest.mark.parametrize("kind", [Q8Linear, Q4Linear])
def test_prompt_rows_take_the_float_gemm_with_the_same_weight(kind):
    layer = kind.from_linear(linear(128, 64))
    x = torch.randn(kind.GEMM_ABOVE + 8, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        many = layer(x)  # GEMMs on the unpacked weight
        one_by_one = torch.cat([layer(row[None]) for row in x])  # the integer kernel, row by row
        exact = F.linear(x, layer.dequantized(), layer.bias)
    # in fp32, or in bf16 where the CPU has AMX (x and w rounded by up to 2^-9 each)
    rounding = 1e-5 if PROMPT_DTYPE == torch.float32 else 2 ** -8 * float((x.abs() @ layer.dequantized().abs().T).max())
    assert torch.allclose(many, exact, atol=rounding)
    # the kernel's activation rounding costs well under 2% of the output's scale
    assert float((one_by_one - exact).abs().max()) < 0.02 * float(exact.abs().max())


@pytest.mark.parametrize("kind", [Bf16Linear, Q8Linear, Q4Linear])
def test_rows_are_the_dequantized_weight(kind):
    layer = kind.from_linear(linear(96, 40))
    ids = torch.tensor([[0, 39, 7], [7, 7, 1]])
    assert torch.equal(layer.rows(ids), layer.dequantized()[ids])
    assert all(torch.equal(layer.row(i), layer.dequantized()[i:i + 1]) for i in (0, 7, 39))
    # a tied embedding takes one token (a decode step) through `row`, several through `rows`
    embed = TiedEmbedding(layer, torch.float32)
    assert torch.equal(embed(torch.tensor([[7]])), layer.dequantized()[7].view(1, 1, -1))
    assert torch.equal(embed(ids), layer.dequantized()[ids])
    with pytest.raises(IndexError):  # out of range, one id or several
        embed(torch.tensor([[40]]))


def test_q8_and_q4_put_gguf_weights_back_on_their_own_grid():
    gguf = pytest.importorskip("gguf")
    import numpy as np

    rows = np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32)
    for qtype, kind in (("Q8_0", Q8Linear), ("Q4_0", Q4Linear), ("Q4_1", Q4Linear)):
        t = gguf.GGMLQuantizationType[qtype]
        weight = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(gguf.quants.quantize(rows, t), t)))
        source = nn.Linear(128, 16, bias=False)
        source.weight.data = weight
        rebuilt = kind.from_linear(source).dequantized()
        assert float((rebuilt - weight).abs().max()) < 1e-3 * float(weight.abs().max()), qtype


def test_q4_stores_the_int4_grid_with_scale_and_offset_in_fp16():
    source = linear(64, 16, bias=False)
    q, scale, zero = quantize_int4(source.weight)
    layer = Q4Linear.from_linear(source)
    d, m = scale.half().float(), (zero - 8 * scale).half().float()
    want = (q.view(16, 2, 32).float() * d[..., None] + m[..., None]).view(16, 64)
    assert torch.equal(layer.dequantized(), want)


def test_quantize_q8_fits_q_to_the_fp16_scale_it_keeps():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    q, d = quantize_q8(w)
    assert q.dtype == torch.int8 and d.dtype == torch.float16 and int(q.abs().max()) <= 127
    error = (q.float().view(8, 2, 32) * d.float()[..., None]).view(8, 64) - w
    assert float(error.abs().max()) <= float(d.float().max()) / 2 + 1e-6


@pytest.mark.slow  # the kernels built again: ~10 s
def test_portable_build_agrees_with_this_cpus_build(tmp_path):
    """kernels.c's and kquants.c's own scalar paths (unpacking, attention; CPUs without AVX2)
    compute what this CPU's build computes; the loops, on the portable variant of both, too.
    (Every variant against the portable one: test_kernel_variants.py.)"""
    import ctypes

    from test_kquants import K_QUANTS, stored

    from chatterm.model.cpu.stored import stored_layer

    path = tmp_path / "portable.so"
    native._build(native._compiler(), path, native_flags=[])
    portable = native.declare(ctypes.CDLL(str(path)))
    scalar = [portable.ct_variant_name(i) for i in range(portable.ct_variant_count())].index(b"scalar")
    assert all(portable.ct_variant_set(family, scalar) == 0 for family in range(6))
    x = torch.randn(2, 768, generator=torch.Generator().manual_seed(4))
    layers = [kind.from_linear(linear(768, 48)) for kind in (Bf16Linear, Q8Linear, Q4Linear)]
    layers += [stored_layer(t, stored(t, 37, 768), (37, 768), None) for t in ("F16", "IQ4_NL", *K_QUANTS)]
    for layer in layers:
        with torch.inference_mode():
            fast = layer(x)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(type(layer), "_lib", portable)
                slow = layer(x)
                unpacked = layer.dequantized()
        assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5 * float(fast.abs().max())), type(layer).__name__
        assert torch.equal(unpacked, layer.dequantized()), type(layer).__name__


def test_bf16_model_runs_bf16_linears_and_fp32_elsewhere(parrot):
    model = copy.deepcopy(parrot[0]).to(torch.bfloat16)
    embedding = model.transformer.wte.weight.detach().clone()
    assert pack_linears(model) == 9
    assert isinstance(model.lm_head, Bf16Linear) and isinstance(model.transformer.h[0].mlp.c_fc, Bf16Linear)
    assert isinstance(model.transformer.wte, TiedEmbedding) and model.transformer.wte.table is model.lm_head
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # norms, biases, positions
    assert torch.equal(model.transformer.wte(torch.tensor([3, 70])), embedding[[3, 70]].float())


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_parrot_recites_on_the_native_kernels(parrot, dtype):
    model, tok = parrot
    ids = tok.encode("User: hi\nAssistant:")

    def greedy(m, n=40):
        out = list(ids)
        with torch.inference_mode():
            for _ in range(n):
                out.append(int(m(torch.tensor([out]))[0, -1].argmax()))
        return out

    want = greedy(model)
    swapped = copy.deepcopy(model).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    assert pack_linears(swapped, None if dtype == "bf16" else int(dtype[3:])) > 0
    assert greedy(swapped) == want


@pytest.mark.slow  # builds the kernels again in a subprocess: ~5 s
def test_without_a_compiler_the_pytorch_kernels_stay(tmp_path, parrot_checkpoint):
    """No C compiler (or CHATTERM_NATIVE=0): int8 still loads, on PyTorch's own kernel."""
    code = ("from chatterm.model.cpu import native; from chatterm.session.backends.local import LocalBackend; "
            f"b = LocalBackend.load({str(parrot_checkpoint)!r}, dtype='int8'); "
            "print(native.unavailable_reason()); print(type(b.generator.model.lm_head).__name__)")
    for env in ({"CC": "", "PATH": str(tmp_path), "CHATTERM_CACHE_DIR": str(tmp_path / "cache")},
                {"CHATTERM_NATIVE": "0"}):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        reason, layer = r.stdout.strip().splitlines()
        assert reason in ("no C compiler (install gcc, or set CC)", "turned off by CHATTERM_NATIVE=0")
        assert layer == Int8Linear.__name__


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_head,n_kv_head,length", [(4, 4, 1), (4, 4, 37), (6, 2, 300), (8, 1, 5)])
def test_one_token_attention_is_sdpa_over_the_cache(n_head, n_kv_head, length, cache_dtype):
    from chatterm.model.cpu.native_attention import attend_one

    g = torch.Generator().manual_seed(length)
    hs, max_len = 16, 512
    cache_k = torch.randn(1, n_kv_head, max_len, hs, generator=g).to(cache_dtype)
    cache_v = torch.randn(1, n_kv_head, max_len, hs, generator=g).to(cache_dtype)
    keys, values = cache_k[:, :, :length], cache_v[:, :, :length]  # strided views, as the cache gives
    q = torch.randn(1, 1, n_head + 3, hs, generator=g)[:, :, :n_head].transpose(1, 2)  # a view too
    got = attend_one(q, keys, values)
    group = n_head // n_kv_head
    want = F.scaled_dot_product_attention(q, keys.float().repeat_interleave(group, 1),
                                          values.float().repeat_interleave(group, 1))
    assert got.shape == (1, 1, n_head * hs)
    assert torch.allclose(got, want.transpose(1, 2).reshape(1, 1, -1), atol=1e-5)
    # where the kernel does not apply the caller runs SDPA
    assert attend_one(q.double(), keys.double(), values.double()) is None
    assert attend_one(q, keys.bfloat16(), values.bfloat16()) is None
    assert attend_one(torch.randn(1, n_head, 2, hs), keys, values) is None


def _decode(model, prompt, steps):
    """Greedy ids and last logits of `steps` cached decode steps after `prompt`."""
    from chatterm.model import KVCache

    cache = KVCache.for_model(model)
    ids = list(prompt)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), torch.arange(len(ids)), cache)[0, -1]
        for _ in range(steps):
            ids.append(int(logits.argmax()))
            logits = model(torch.tensor([[ids[-1]]]), torch.tensor([len(ids) - 1]), cache)[0, -1]
    return ids, logits


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_fused_block_step_is_the_block_in_pytorch(dtype, monkeypatch):
    import chatterm.model.families.gpt2 as gpt
    from chatterm.model import GPT
    from chatterm.model.families.gpt2 import GPTConfig

    config = GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=128, vocab_size=300)
    model = GPT(config).init_weights(5).eval().to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    pack_linears(model, None if dtype == "bf16" else int(dtype[3:]))
    fused_ids, fused_logits = _decode(model, [1, 2, 3, 4, 5], 30)
    from chatterm.model.cpu.native_blocks import _Plan, _plans

    assert isinstance(_plans.get(model), _Plan)  # the fused step ran
    assert _plans[model].head is not None  # and its final LayerNorm and head
    monkeypatch.setattr(gpt, "gpt2_decode_step", lambda *args: None)
    plain_ids, plain_logits = _decode(model, [1, 2, 3, 4, 5], 30)
    assert fused_ids == plain_ids
    # bf16: the same sums in another order. 8/4 bits: a last-digit difference in an activation can
    # move its 8-bit rounding by one step (1/127 of its block's largest value).
    tolerance = 1e-4 if dtype == "bf16" else 5e-3
    assert float((fused_logits - plain_logits).abs().max()) < tolerance * float(plain_logits.abs().max())


@pytest.mark.parametrize("dtype,bias,tied", [("bf16", False, True), ("int8", True, False), ("int4", False, False)])
def test_fused_llama_block_step_is_the_block_in_pytorch(dtype, bias, tied, monkeypatch):
    import chatterm.model.families.llama as llama
    from chatterm.model.cpu.native_blocks import _Plan, _plans

    config = llama.LlamaConfig(block_size=96, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                               intermediate_size=96, attention_bias=bias, tie_embeddings=tied)
    model = llama.Llama(config).init_weights(7).eval().to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    if bias:  # Qwen2's q/k/v biases, non-zero so a misplaced one shows
        torch.nn.init.normal_(model.layers[0].attn.qkv.bias, std=0.5, generator=torch.Generator().manual_seed(1))
    pack_linears(model, None if dtype == "bf16" else int(dtype[3:]))
    fused_ids, fused_logits = _decode(model, [1, 2, 3, 4, 5], 30)
    assert isinstance(_plans.get(model), _Plan)  # the fused step ran
    assert _plans[model].head is not None  # and its final RMSNorm and head
    monkeypatch.setattr(llama, "llama_decode_step", lambda *args: None)
    plain_ids, plain_logits = _decode(model, [1, 2, 3, 4, 5], 30)
    assert fused_ids == plain_ids
    tolerance = 1e-4 if dtype == "bf16" else 5e-3  # see the GPT-2 test above
    assert float((fused_logits - plain_logits).abs().max()) < tolerance * float(plain_logits.abs().max())


def _tiny(family: str, dtype: str, tied: bool = True):
    """A tiny GPT-2 or Llama with fixed weights, packed as `dtype` (bf16, int8, int4)."""
    import chatterm.model.families.llama as llama
    from chatterm.model import GPT
    from chatterm.model.families.gpt2 import GPTConfig

    if family == "gpt2":
        model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=301)).init_weights(3)
    else:
        model = llama.Llama(llama.LlamaConfig(block_size=64, vocab_size=301, n_layer=2, n_head=4, n_kv_head=2,
                                              n_embd=64, intermediate_size=96, tie_embeddings=tied)).init_weights(3)
    model = model.eval().to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    pack_linears(model, None if dtype == "bf16" else int(dtype[3:]))
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_a_step_by_token_id_is_the_fused_forward_step(family, dtype):
    """decode_token (Python ints; the embedding rows and rotary rows read by the kernels) gives
    the fused forward step's logits exactly, and declines what it cannot take."""
    from chatterm.model import KVCache

    model = _tiny(family, dtype)
    by_id, by_tensor = KVCache.for_model(model), KVCache.for_model(model)
    prompt = [5, 17, 300, 2]
    with torch.inference_mode():
        for cache in (by_id, by_tensor):
            model(torch.tensor([prompt]), torch.arange(len(prompt)), cache)
        token = 7
        for position in range(len(prompt), len(prompt) + 12):
            got = model.decode_token(token, position, by_id)
            want = model(torch.tensor([[token]]), torch.tensor([position]), by_tensor)[0, -1]
            assert got is not None and torch.equal(got, want), position
            token = int(want.argmax())
        assert by_id.length == by_tensor.length == len(prompt) + 12
        # an id past the vocabulary, a position past the window: forward's errors are the ones raised
        assert model.decode_token(301, by_id.length, by_id) is None
        assert model.decode_token(-1, by_id.length, by_id) is None
        assert model.decode_token(3, 64, by_id) is None
        with pytest.raises(ValueError, match="unwritten"):  # the cache's own check, as forward's
            model.decode_token(3, by_id.length + 1, by_id)
        model.train()  # a model set to train is forward's, even right after a step by id
        assert model.decode_token(3, by_id.length, by_id) is None


def test_a_step_by_token_id_reads_a_packed_position_table(tmp_path):
    """GPT-2 from a Q8_0 GGUF file: its position embedding is a packed table the kernels read by row."""
    from chatterm.bench_llama import write_gpt2_gguf
    from chatterm.model import GPT, KVCache, load_checkpoint
    from chatterm.model.cpu.linear import TiedEmbedding
    from chatterm.model.families.gpt2 import GPTConfig

    source = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=301)).init_weights(4).eval()
    write_gpt2_gguf(source, tmp_path / "m.gguf", "Q8_0")
    model = load_checkpoint(tmp_path / "m.gguf", precision="int8", inference=True).model
    assert isinstance(model.transformer.wpe, TiedEmbedding)
    by_id, by_tensor = KVCache.for_model(model), KVCache.for_model(model)
    with torch.inference_mode():
        for cache in (by_id, by_tensor):
            model(torch.tensor([[1, 2, 3]]), torch.arange(3), cache)
        for position, token in zip(range(3, 9), (4, 250, 9, 9, 0, 300)):
            got = model.decode_token(token, position, by_id)
            want = model(torch.tensor([[token]]), torch.tensor([position]), by_tensor)[0, -1]
            assert got is not None and torch.equal(got, want), position


def test_a_step_by_token_id_declines_an_untied_embedding():
    from chatterm.model import KVCache

    model = _tiny("llama", "int8", tied=False)
    cache = KVCache.for_model(model)
    with torch.inference_mode():
        model(torch.tensor([[1, 2]]), torch.arange(2), cache)
        assert model.decode_token(3, 2, cache) is None  # the caller's forward() computes the embedding


def test_fused_step_of_a_copied_model_reads_the_copy(parrot):
    import gc

    model = copy.deepcopy(parrot[0])
    pack_linears(model, 8)
    want = _decode(model, [5, 6, 7], 10)[0]  # builds each block's pointers
    twin = copy.deepcopy(model)
    del model
    gc.collect()
    assert _decode(twin, [5, 6, 7], 10)[0] == want


def test_native_models_keep_an_fp16_cache_clamped_to_its_range(parrot):
    from chatterm.model import KVCache

    model = copy.deepcopy(parrot[0])
    pack_linears(model, 8)
    cache = KVCache.for_model(model)
    assert cache.keys.dtype == torch.float16
    huge = torch.full((1, cache.keys.size(2), 1, cache.keys.size(4)), 1e6)
    cache.update(0, torch.tensor([0]), huge, -huge)
    assert float(cache.keys[0, 0, 0, 0, 0]) == 65504 and float(cache.values[0, 0, 0, 0, 0]) == -65504


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_keeps_no_view_of_the_loaded_weights(parrot, bits):
    """Loaded from safetensors, the float tensors are views of the memory-mapped file, and one
    view left behind (a bias, say) keeps every page quantizing read resident (~500 MB measured
    on GPT-2 small). After packing nothing may share memory with what was loaded."""
    model = copy.deepcopy(parrot[0])
    originals = [*model.parameters(), *model.buffers()]  # held, so no address is reused
    loaded = {t.untyped_storage().data_ptr() for t in originals}
    pack_linears(model, bits)
    kept = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not kept & loaded


def test_widths_the_kernels_do_not_take_fall_back_to_pytorch_layers():
    """48 inputs are not whole blocks of 32: those layers take PyTorch's kernel, the model still
    decodes (the fused step does not apply) and agrees with its float self."""
    from chatterm.model import GPT, KVCache
    from chatterm.model.families.gpt2 import GPTConfig
    from chatterm.model.cpu.native_blocks import _NOT_HERE, _plans

    def last_logits(m, ids=(1, 2, 3, 9, 40, 7, 120)):  # a prompt, then one token per step
        cache = KVCache.for_model(m)
        with torch.inference_mode():
            logits = m(torch.tensor([ids[:3]]), torch.arange(3), cache)
            for pos in range(3, len(ids)):
                logits = m(torch.tensor([[ids[pos]]]), torch.tensor([pos]), cache)
        return logits[0, -1]

    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=48, block_size=64, vocab_size=200)).init_weights(3).eval()
    want = last_logits(model)
    pack_linears(model, 8)
    assert isinstance(model.transformer.h[0].attn.c_attn, Int8Linear)
    assert isinstance(model.transformer.h[0].mlp.c_proj, Q8Linear)  # 192 inputs: whole blocks
    got = last_logits(model)
    assert _plans.get(model) is _NOT_HERE
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())
