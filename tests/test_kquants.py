"""GGUF tensors as stored on chatterm's CPU kernels (stored.stored_layer, native/kquants.c).

Every type the kernels read (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, IQ4_XS) is checked
against gguf's own reference dequantization: `rows()` and `dequantized()` equal it exactly, and a
product equals it times the activations within what quantizing the activations may cost. The
K-quants and IQ4 types have no quantizer in the gguf package, so their tensors are random stored
bytes (every bit pattern of a block is a valid one) with finite fp16 scales of a chosen size.
"""

import numpy as np
import pytest
import torch

from chatterm.model.cpu import native
from chatterm.model.cpu.native_linear import PROMPT_DTYPE, StackedLinear, stack_layers
from chatterm.model.cpu.stored import stored_layer

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")

QUANTIZED_BY_GGUF = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]  # Q5_0, Q5_1: held as Q8_0 (with offsets)
K_QUANTS = ["Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "IQ4_XS"]  # IQ4_XS: read by the same loops
ALL_TYPES = ["F16", "BF16", *QUANTIZED_BY_GGUF, "IQ4_NL", *K_QUANTS]
# the types gguf cannot quantize: values and bytes per block, where a block keeps its fp16 d
# (and dmin), the largest |sc q| (and the dmin / d that centres the weights near 0); random
# weights of a chosen size come from random bytes
RANDOM_LAYOUT = {"Q4_K": (256, 144, 0, 2, 15 * 63, 7.5), "Q5_K": (256, 176, 0, 2, 31 * 63, 15.5),
                 "Q6_K": (256, 210, 208, None, 32 * 127, 0), "Q2_K": (256, 84, 80, 82, 3 * 15, 1.5),
                 "Q3_K": (256, 110, 108, None, 4 * 32, 0), "IQ4_XS": (256, 136, 0, None, 127 * 32, 0),
                 "IQ4_NL": (32, 18, 0, None, 127, 0)}


def random_blocks(type_name: str, n: int, k: int, seed: int, largest: float = 1.0) -> np.ndarray:
    """Random stored bytes (n, k / block values * block bytes) whose weights stay below ~`largest`."""
    values, size, d_at, dmin_at, most, centre = RANDOM_LAYOUT[type_name]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, k // values, size), dtype=np.uint8)
    d = rng.uniform(0.5, 1.0, (n, k // values)) * largest / most
    blocks[..., d_at:d_at + 2] = d.astype(np.float16)[..., None].view(np.uint8)
    if dmin_at is not None:
        blocks[..., dmin_at:dmin_at + 2] = (d * centre).astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(n, -1)


def stored(type_name: str, n: int, k: int, seed: int = 0, largest: float = 1.0) -> np.ndarray:
    """A tensor's stored bytes, uint8 (n, bytes per row), as a GGUF file holds it."""
    if type_name in RANDOM_LAYOUT:
        return random_blocks(type_name, n, k, seed, largest)
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * largest / 3
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[type_name])
    return np.ascontiguousarray(raw).view(np.uint8).reshape(n, -1)


def reference(type_name: str, raw: np.ndarray, n: int, k: int) -> torch.Tensor:
    """gguf's own dequantization, fp32 (n, k)."""
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32).reshape(n, k))


def activation_block(type_name: str) -> int:
    """How many inputs share one activation scale: 256 for the K-quants (ggml's q8_K), 32 for
    Q8_0/Q4_0/Q4_1/IQ4_NL, none (fp32 activations) for F16/BF16."""
    return 256 if type_name in K_QUANTS else 32 if type_name in (*QUANTIZED_BY_GGUF, "IQ4_NL") else 0


def quantization_bound(type_name: str, w: torch.Tensor, x: torch.Tensor, on_kernel: bool) -> torch.Tensor:
    """(M, N): how far the kernel's result may be from w @ x exactly. Each activation rounded to
    its block's grid (step max|x| / 127) moves by at most half a step, so output n moves by at
    most sum_k |w_nk| * max|x in k's block| / 254; plus fp32 summation (1e-5 of sum |w x|).
    Not `on_kernel` (more rows than the layer's GEMM_ABOVE): a float GEMM, no activation rounding,
    and where that GEMM is bf16 (PROMPT_DTYPE, AMX CPUs) x and w each rounded by up to 2^-9."""
    wa, xa = w.double().abs(), x.double().abs()
    bound = 1e-5 * xa @ wa.T
    if not on_kernel and PROMPT_DTYPE == torch.bfloat16:
        bound += 2 ** -8 * xa @ wa.T
    block = activation_block(type_name)
    if block and on_kernel:
        amax = xa.view(x.size(0), -1, block).amax(-1)  # (M, K / block)
        bound += (amax / 254) @ wa.view(w.size(0), -1, block).sum(-1).T
    return bound


def quantized_activations(type_name: str, x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: rounded per block to 127 steps of the block's largest |x|."""
    block = activation_block(type_name)
    blocks = x.double().view(x.size(0), -1, block)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    return (torch.round(blocks / torch.where(d > 0, d, 1)).clamp(-127, 127) * d).view(x.shape)


@pytest.mark.parametrize("type_name", ALL_TYPES)
@pytest.mark.parametrize("k", [256, 768])  # 1 and 3 super-blocks: the loops' tails
def test_stored_layer_computes_with_the_stored_values(type_name, k):
    n = 37  # odd: the paired-row loops' last row
    raw = stored(type_name, n, k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1))
    layer = stored_layer(type_name, raw, (n, k), bias)
    w = reference(type_name, raw, n, k)
    assert torch.equal(layer.dequantized(), w)
    ids = torch.tensor([[0, 36, 5], [5, 5, 17]])
    assert torch.equal(layer.rows(ids), w[ids])
    assert torch.equal(layer.row(36), w[36:37])
    for rows in (1, 3, 6, 37):  # the K-quant loops take rows 4 (AVX-512; AVX2: 2) at a time, then the rest
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        with torch.inference_mode():
            got = layer(x).double()
        exact = x.double() @ w.double().T + bias.double()
        on_kernel = rows <= layer.GEMM_ABOVE
        assert bool(((got - exact).abs() <= quantization_bound(type_name, w, x, on_kernel)).all()), (type_name, rows)
        if activation_block(type_name) and on_kernel:  # and it is that arithmetic, to fp32 rounding
            same = quantized_activations(type_name, x) @ w.double().T + bias.double()
            assert float((got - same).abs().max()) < 1e-5 * float(same.abs().max()), (type_name, rows)


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K", "Q4_0", "IQ4_XS", "IQ4_NL"])
def test_a_wrong_nibble_order_or_scale_would_be_caught(type_name):
    """The checks above are tight enough: a reference with the nibbles of each byte swapped, or
    one super-block's scale doubled, is far outside the tolerance the kernel meets."""
    n, k = 9, 768
    raw = stored(type_name, n, k)
    layer = stored_layer(type_name, raw, (n, k), None)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    got = layer(x).double()
    swapped = ((raw >> 4) | (raw << 4)).astype(np.uint8)  # every byte's nibbles swapped, scales included
    scaled = raw.copy()
    d_at = RANDOM_LAYOUT[type_name][2] if type_name in RANDOM_LAYOUT else 0
    scaled[:, d_at:d_at + 2] = (scaled[:, d_at:d_at + 2].view(np.float16) * 2).view(np.uint8)
    for wrong in (swapped, scaled):
        w = reference(type_name, wrong, n, k)
        finite = torch.isfinite(w).all(-1)  # a swapped fp16 scale can be inf: those outputs are left out
        assert bool(finite.sum() >= n // 2)
        w = w[finite]
        exact = x.double() @ w.double().T
        assert bool(((got[:, finite] - exact).abs() > quantization_bound(type_name, w, x, True)).any())


def test_stored_layer_declines_what_it_has_no_kernel_for_and_reports_bad_sizes():
    raw = np.zeros((4, 256 * 4), dtype=np.uint8)
    assert stored_layer("F32", raw, (4, 256), None) is None  # the loader keeps a float linear
    assert stored_layer("IQ2_XXS", raw, (4, 256), None) is None  # the loader dequantizes it
    with pytest.raises(ValueError, match="a Q4_K tensor of shape 4x256 needs 4x144 bytes, got 4x1024 of uint8"):
        stored_layer("Q4_K", raw, (4, 256), None)
    with pytest.raises(ValueError, match="Q8_0"):
        stored_layer("Q8_0", raw[:, :100], (4, 100), None)  # not whole blocks of 32


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_1", "F16", "Q6_K"])
def test_a_memory_mapped_tensor_is_copied_out(tmp_path, type_name):
    """Built from a read-only view of a mapped file, the layer keeps none of the file's pages."""
    n, k = 1030, 256  # more than one chunk of rows
    raw = stored(type_name, n, k)
    path = tmp_path / "tensor.bin"
    raw.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=raw.shape)
    layer = stored_layer(type_name, mapped, (n, k), None)
    assert all(not np.shares_memory(mapped, t.numpy()) for t in layer.buffers() if t is not None)
    del mapped
    path.unlink()
    assert torch.equal(layer.dequantized(), reference(type_name, raw, n, k))


def _kquant_llama():
    """A 3-layer Llama whose linears are stored tensors of mixed types, as a Q4_K_M file mixes
    them (Q6_K attn_v / ffn_down in some layers, Q6_K or Q8_0 output), every type once or more."""
    import chatterm.model.families.llama as llama

    config = llama.LlamaConfig(block_size=96, vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, n_embd=256,
                               intermediate_size=256, tie_embeddings=False)
    model = llama.Llama(config).init_weights(7).eval()
    plan = [("Q4_K", "Q6_K", "Q5_K", "Q6_K"), ("Q6_K", "Q3_K", "Q2_K", "IQ4_NL"), ("F16", "IQ4_XS", "Q8_0", "Q4_K")]
    for seed, (block, types) in enumerate(zip(model.layers, plan)):
        for name, type_name, owner in zip(("qkv", "out", "gate_up", "down"), types,
                                          (block.attn, block.attn, block.mlp, block.mlp)):
            n, k = getattr(owner, name).weight.shape
            # weights a few times the init's size (1/sqrt(k)): clear winners for greedy decoding
            setattr(owner, name, stored_layer(type_name, stored(type_name, n, k, seed, 6 / k ** 0.5), (n, k), None))
    # layer 0's q, k, v as a Q4_K_M file stores them (Q4_K, Q4_K, Q6_K): a stacked projection;
    # layer 2's gate and up both Q8_0: merged into one layer
    q, k, v = _qkv_parts(model, ("Q4_K", "Q4_K", "Q6_K"), 11)
    model.layers[0].attn.qkv = stack_layers([q, k, v])
    half = model.layers[2].mlp.gate_up.out_features // 2
    model.layers[2].mlp.gate_up = stack_layers([stored_layer("Q8_0", stored("Q8_0", half, 256, s), (half, 256), None)
                                                for s in (12, 13)])
    model.lm_head = stored_layer("Q6_K", stored("Q6_K", 300, 256, 9, 0.5), (300, 256), None)
    return llama, model


def _qkv_parts(model, types, seed):
    """Layer 0's q, k and v projections as stored tensors of `types`."""
    attn = model.layers[0].attn
    widths = (attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim, attn.n_kv_head * attn.head_dim)
    return [stored_layer(t, stored(t, n, 256, seed + i, 6 / 16), (n, 256), None)
            for i, (t, n) in enumerate(zip(types, widths))]


def test_fused_step_decodes_a_kquant_llama_as_pytorch_does(monkeypatch):
    from chatterm.model.cpu.native_blocks import _Plan, _plans
    from test_native_kernels import _decode

    llama, model = _kquant_llama()
    fused_ids, fused_logits = _decode(model, [1, 2, 3, 4, 5], 20)
    assert isinstance(_plans.get(model), _Plan)  # the fused step ran, with every kind
    assert isinstance(model.layers[0].attn.qkv, StackedLinear)
    assert type(model.layers[2].mlp.gate_up).__name__ == "Q8Linear"
    monkeypatch.setattr(llama, "llama_decode_step", lambda *args: None)
    plain_ids, plain_logits = _decode(model, [1, 2, 3, 4, 5], 20)
    assert fused_ids == plain_ids
    assert len(set(fused_ids[5:])) > 1  # a real continuation, not one token repeated
    # the same kernels in the same order; only a last-digit difference in an activation (the
    # fused step's norms) can move its 8-bit rounding by one step (see test_native_kernels). On
    # weights this large one such step moves the logits by ~1% (measured at other weight scales);
    # at this one none happens (measured 2e-7).
    assert float((fused_logits - plain_logits).abs().max()) < 5e-3 * float(plain_logits.abs().max())


@pytest.mark.parametrize("type_name", ["Q4_K", "Q8_0", "BF16"])
def test_prompts_unpack_the_weight_slice_by_slice(type_name):
    """Above GEMM_ABOVE rows the product is float GEMMs over slices of rows of the unpacked
    weight (3 slices of 16, 16 and 5 rows here), with each slice's part of the bias."""
    from chatterm.model.cpu.native_linear import chunked_gemm

    n, k = 37, 768
    layer = stored_layer(type_name, stored(type_name, n, k), (n, k), torch.randn(n))
    x = torch.randn(layer.GEMM_ABOVE + 1, k, generator=torch.Generator().manual_seed(3))
    want = torch.nn.functional.linear(x, layer.dequantized(), layer.bias)
    assert torch.allclose(chunked_gemm(layer, x, 16 * 4 * k, torch.float32), want, atol=1e-5)
    assert torch.equal(layer.dequantized(16, 32), layer.dequantized()[16:32])
    with torch.inference_mode():  # in PROMPT_DTYPE
        got = layer(x)
    bound = quantization_bound(type_name, layer.dequantized(), x, on_kernel=False) + 1e-5
    assert bool(((got - want).abs() <= bound).all())


@pytest.mark.parametrize("types", [("Q4_K", "Q4_K", "Q6_K"), ("Q6_K", "Q6_K", "Q6_K"), ("Q8_0", "Q4_1", "F16")])
def test_stacked_layers_are_their_parts_one_after_another(types):
    """q, k and v stored as different types stack into one projection (one layer where the
    types agree), with each part's bias in its place."""
    widths, k = (64, 32, 32), 256
    parts = [stored_layer(t, stored(t, n, k, i), (n, k), torch.randn(n) if i != 1 else None)
             for i, (t, n) in enumerate(zip(types, widths))]
    layer = stack_layers(parts)
    assert isinstance(layer, StackedLinear) == (len(set(types)) > 1)
    assert layer.out_features == 128 and layer.in_features == k
    assert torch.equal(layer.dequantized(), torch.cat([part.dequantized() for part in parts]))
    for rows in (1, 3, 40):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        with torch.inference_mode():
            assert torch.allclose(layer(x), torch.cat([part(x) for part in parts], -1), atol=1e-5)
    with pytest.raises(ValueError, match="one input width"):
        stack_layers([parts[0], stored_layer("Q6_K", stored("Q6_K", 8, 512), (8, 512), None)])
