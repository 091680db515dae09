"""The model layer: cached == uncached, checkpoint formats give the logits their own code gives."""

import json
import math

import pytest
import torch

from chatterm.model import CheckpointError, GPTConfig, KVCache, load_checkpoint, pack_linears, save_checkpoint
from chatterm.model.cpu.linear import PackedLinear, can_pack
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.generator import Generator
from chatterm.engine.tokenizers import open_tokenizer
from helpers import byte_tokenizer_spec, tiny_model


def reference_logits(sd: dict, cfg: GPTConfig, ids: list[int]) -> torch.Tensor:
    """GPT-2 written out with plain tensor math from a nanoGPT-style state dict: an independent
    implementation (explicit attention matrix, manual LayerNorm and GELU) to compare against."""
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][: len(ids)]
    T, C, H = len(ids), cfg.n_embd, cfg.n_head

    def ln(v, p):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + cfg.layer_norm_eps) * sd[p + ".weight"] + sd[p + ".bias"]

    def lin(v, p):
        return v @ sd[p + ".weight"].T + sd[p + ".bias"]

    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(T, H, C // H).transpose(0, 1) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(0, 1).reshape(T, C), p + "attn.c_proj")
        h = lin(ln(x, p + "ln_2"), p + "mlp.c_fc")
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + lin(h, p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["transformer.wte.weight"].T


def test_cached_and_uncached_greedy_agree_for_300_tokens():
    model = tiny_model(seed=1, block_size=320)
    gen = Generator(model, open_tokenizer(byte_tokenizer_spec()))
    ids = [72, 105, 33]
    logits, _ = gen.prefill(ids)
    uncached = list(ids)
    with torch.inference_mode():
        for step in range(300):
            full = model(torch.tensor([uncached]))[0, -1]
            assert torch.allclose(logits, full, atol=1e-4), f"logits differ at step {step}"
            token = int(full.argmax())
            assert token == int(logits.argmax()), f"tokens differ at step {step}"
            uncached.append(token)
            if len(uncached) < 320:
                logits = gen.decode(token)
    assert len(uncached) == 303


def test_prefill_after_a_cached_prefix_masks_causally():
    """Several new queries after a cached prefix (query shorter than keys) match a full pass."""
    model = tiny_model(seed=2)
    x = torch.randint(0, 288, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = model(x)
        cache = KVCache.for_model(model)
        parts = []
        for a, b in ((0, 7), (7, 8), (8, 30), (30, 40)):
            parts.append(model(x[:, a:b], torch.arange(a, b), cache))
            assert cache.length == b  # the cache advanced itself: no commit to remember
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_cache_rolls_back_to_any_prefix():
    """Writing at an earlier position is the rollback: what followed stops counting."""
    model = tiny_model(seed=3)
    x = torch.randint(0, 288, (1, 30), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 288, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cache = KVCache.for_model(model)
        model(x, torch.arange(30), cache)
        out = model(y, torch.arange(12, 17), cache)
        assert cache.length == 17
        expected = model(torch.cat([x[:, :12], y], 1))[:, 12:]
        with pytest.raises(ValueError, match="unwritten"):  # positions only ever continue the prefix
            model(y, torch.arange(20, 25), cache)
        with pytest.raises(ValueError, match="needs input_pos"):
            model(y, cache=cache)
    assert torch.allclose(out, expected, atol=1e-5)


def test_cache_is_sized_by_key_value_heads():
    """Grouped-query attention keeps fewer key/value heads than query heads: the cache follows
    `n_kv_head` when a config has one, and `n_head` otherwise."""
    from types import SimpleNamespace

    model = tiny_model(seed=3)
    assert KVCache.for_model(model).keys.shape == (2, 1, 2, 256, 32)  # (layer, B, heads, len, hs)
    gqa = SimpleNamespace(config=SimpleNamespace(n_layer=3, n_head=8, n_kv_head=2, head_dim=16, block_size=64),
                          parameters=model.parameters)
    assert KVCache.for_model(gqa).keys.shape == (3, 1, 2, 64, 16)


def test_static_cache_matches_dynamic():
    """The compile-friendly static cache (index_copy_ + full-length mask) gives the same logits."""
    model = tiny_model(seed=4)
    x = torch.randint(0, 288, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        static = KVCache.for_model(model, static=True)
        a = model(x[:, :15], torch.arange(15), static)
        outs = [a]
        for t in range(15, 20):
            outs.append(model(x[:, t : t + 1], torch.tensor([t]), static))
        full = model(x)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_nanogpt_checkpoint_matches_reference_math(tmp_path):
    model = tiny_model(seed=5)
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=True, vocab_size=cfg.vocab_size, dropout=0.0)
    torch.save({"model": sd, "model_args": model_args, "iter_num": 7, "best_val_loss": torch.tensor(1.5),
                "config": {"batch_size": 12}}, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path)  # the folder is enough
    assert ckpt.format == "nanogpt"
    ids = [5, 80, 17, 200, 3, 3, 9]
    with torch.inference_mode():
        ours = ckpt.model(torch.tensor([ids]))[0]
    ref = reference_logits(model.state_dict(), cfg, ids)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_huggingface_folder_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ckpt = load_checkpoint(tmp_path / "hf")
    assert ckpt.format == "huggingface" and ckpt.config.n_head == 4
    ids = torch.tensor([[1, 50, 299, 7, 7, 120, 64, 0]])
    with torch.inference_mode():
        theirs = hf(ids).logits
        ours = ckpt.model(ids)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_huggingface_pytorch_bin_is_read_too(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    (tmp_path / "hf").mkdir()
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "hf" / "config.json")
    ckpt = load_checkpoint(tmp_path / "hf")
    ids = torch.tensor([[1, 2, 3, 99]])
    with torch.inference_mode():
        assert torch.allclose(ckpt.model(ids), hf(ids).logits, atol=1e-4)


def test_plain_state_dict_with_sidecar_json(tmp_path):
    model = tiny_model(seed=6)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="attention heads"):
        load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "weights.json").write_text(json.dumps({"n_head": 2}))
    ckpt = load_checkpoint(tmp_path / "weights.pt")
    assert ckpt.format == "state_dict" and ckpt.config == model.config
    ids = torch.tensor([[4, 5, 6]])
    with torch.inference_mode():
        assert torch.allclose(ckpt.model(ids), model(ids))


def test_textbook_state_dict_loads(tmp_path):
    """The textbook GPTModel naming (tok_emb, trf_blocks.N.att.W_query, ..., untied out_head)."""
    model = tiny_model(seed=7, tie_embeddings=False)
    sd = model.state_dict()
    C = model.config.n_embd
    tb = {"tok_emb.weight": sd["transformer.wte.weight"], "pos_emb.weight": sd["transformer.wpe.weight"],
          "final_norm.scale": sd["transformer.ln_f.weight"], "final_norm.shift": sd["transformer.ln_f.bias"],
          "out_head.weight": sd["lm_head.weight"]}
    for i in range(model.config.n_layer):
        p, q = f"transformer.h.{i}.", f"trf_blocks.{i}."
        for name, w, b in zip(("query", "key", "value"), sd[p + "attn.c_attn.weight"].split(C), sd[p + "attn.c_attn.bias"].split(C)):
            tb[q + f"att.W_{name}.weight"], tb[q + f"att.W_{name}.bias"] = w, b
        for a, b in (("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"), ("ff.layers.2", "mlp.c_proj")):
            tb[q + a + ".weight"], tb[q + a + ".bias"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            tb[q + a + ".scale"], tb[q + a + ".shift"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
    torch.save(tb, tmp_path / "model.pth")
    (tmp_path / "model.json").write_text(json.dumps({"n_heads": 2, "emb_dim": C, "qkv_bias": True}))
    ckpt = load_checkpoint(tmp_path / "model.pth")
    assert not ckpt.config.tie_embeddings
    ids = torch.tensor([[9, 8, 7, 6]])
    with torch.inference_mode():
        assert torch.allclose(ckpt.model(ids), model(ids), atol=1e-6)


def test_our_format_round_trips_as_folder_and_single_file(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(seed=8)
    meta = {"name": "t", "tokenizer": byte_tokenizer_spec()}
    save_checkpoint(tmp_path / "ours", model, meta)
    ckpt = load_checkpoint(tmp_path / "ours")
    assert ckpt.format == "chatterm" and ckpt.meta["tokenizer"]["type"] == "bpe"
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    full_meta = {**meta, "model": model.config.to_dict()}
    save_file(sd, tmp_path / "single.safetensors", metadata={"chatterm": json.dumps(full_meta)})
    single = load_checkpoint(tmp_path / "single.safetensors")
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert torch.equal(ckpt.model(ids), model(ids))
        assert torch.equal(single.model(ids), model(ids))


def test_bf16_load_runs(tmp_path):
    model = tiny_model(seed=9)
    save_checkpoint(tmp_path / "m", model, {})
    ckpt = load_checkpoint(tmp_path / "m", precision="bf16")
    assert next(ckpt.model.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        out = ckpt.model(torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linears_match_the_plain_model(dtype):
    """The CPU inference path's linears (oneDNN-packed; a bf16 model's are chatterm's own kernels
    where they build) give the plain model's logits and the same greedy continuation through the
    KV cache."""
    from chatterm.model.cpu import native
    from chatterm.model.cpu.native_linear import Bf16Linear

    plain = tiny_model(seed=3).to(dtype)
    packed = tiny_model(seed=3).to(dtype)
    layer = Bf16Linear if dtype == torch.bfloat16 and native.library() is not None else PackedLinear
    if layer is PackedLinear and not can_pack(packed):
        pytest.skip(f"oneDNN packing unsupported for {dtype} on this CPU")
    assert pack_linears(packed) == 2 * 4 + 1  # four per block, and the output projection
    assert isinstance(packed.lm_head, layer) and isinstance(packed.transformer.h[1].mlp.c_fc, layer)
    ids = torch.tensor([[5, 9, 200, 31, 7, 7, 64]])
    with torch.inference_mode():
        want, got = plain(ids).float(), packed(ids).float()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got, want, atol=tolerance * float(want.abs().max())), float((got - want).abs().max())
    tok = open_tokenizer(byte_tokenizer_spec(eot=False))
    settings = SamplingSettings(temperature=0, max_new_tokens=60)
    replies = [Generator(m, tok).complete([72, 105], settings).token_ids for m in (plain, packed)]
    assert len(replies[0]) == 60 and replies[0] == replies[1]


def test_packing_leaves_unsupported_models_untouched():
    model = tiny_model(seed=3).double()  # oneDNN has no float64 linears
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pack_linears(model) == 0
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
