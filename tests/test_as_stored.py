"""Weights as stored: every GGUF type we read loads a tensor at a time into the layer that
computes with it, with no fp32 copy of the model, and gives the dequantized model's logits; the
memory check counts what is really held; a Hugging Face index cannot name files outside its
folder."""

import json

import numpy as np
import pytest
import torch

from chatterm.model import CheckpointError, load_checkpoint
from chatterm.model.cpu import native
from chatterm.model.cpu.linear import weights_label
from chatterm.model.formats.gguf import GGUFFile
from chatterm.model.cpu.native_linear import Bf16Linear, NativeLinear, Q4Linear, Q8Linear, StackedLinear
from tiny_llama import hf_model, save_hf_folder, write_gguf

PROMPT = torch.tensor([[5, 77, 120, 33, 260, 9, 41]])
needs_kernels = pytest.mark.skipif(native.library() is None, reason=f"no CPU kernels here ({native.unavailable_reason()})")
# type -> the layer class its linears become as stored (None: dequantized to bf16, one tensor at a time)
AS_STORED = {"Q8_0": Q8Linear, "Q4_0": Q4Linear, "Q4_1": Q4Linear, "BF16": Bf16Linear, "Q5_0": Q8Linear, "Q5_1": Q8Linear,
             "MXFP4": None}


@pytest.fixture(scope="module")
def reference():
    return hf_model("llama", seed=3)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@needs_kernels
@pytest.mark.parametrize("qtype", sorted(AS_STORED))
def test_each_type_loads_as_stored_and_gives_the_dequantized_logits(reference, tmp_path, qtype):
    path = write_gguf(tmp_path / "m.gguf", reference, "llama", qtype=qtype)
    stored = load_checkpoint(path, inference=True).model
    linears = [m for m in stored.modules() if isinstance(m, NativeLinear)]
    assert linears and not [m for m in stored.modules() if isinstance(m, torch.nn.Linear)]
    kind = AS_STORED[qtype] or Bf16Linear
    assert all(isinstance(m, kind) for m in linears), {type(m).__name__ for m in linears}
    g = GGUFFile(path)
    file_bytes = sum(info.nbytes for info in g.tensors.values())
    g.close()
    # What the model holds is the file's blocks (plus fp32 norms and rotary tables), never fp32
    # weights: at most the file plus a small allowance, where fp32 would be 2-8x the file.
    extra = 4 * stored.config.n_embd * (2 * stored.config.n_layer + 1) + stored.rope_cos.nbytes * 2
    # bf16 per tensor: at most 16/4.5 of the file; Q4_0 blocks gain the offset plane Q4_1 has (20/18);
    # Q5_0's are held as Q8_0's (34/22), Q5_1's as Q8_0's with offsets (36/24)
    limit = file_bytes * {"Q4_0": 20 / 18, "Q5_0": 34 / 22, "Q5_1": 36 / 24}.get(qtype, 1.0 if AS_STORED[qtype] else 4.0) + extra
    assert model_bytes(stored) <= limit
    reference_model = load_checkpoint(path, precision="fp32").model  # the file dequantized, plain layers
    with torch.inference_mode():
        got, want = stored(PROMPT)[0], reference_model(PROMPT)[0]
    # Activations are quantized per block of 32 for the 8- and 4-bit kernels (as llama.cpp does)
    # and bf16 rounds a dequantized weight: a small relative error, not a different model.
    tolerance = {"BF16": 1e-3}.get(qtype, 0.02 if qtype in ("Q8_0", "Q5_0", "Q5_1") else 0.05)
    assert (got - want).abs().max() / want.abs().max() < tolerance
    assert got.argmax(-1).eq(want.argmax(-1)).float().mean() > 0.8


@needs_kernels
def test_q_k_and_v_in_different_types_each_keep_their_own(reference, tmp_path):
    """A Q4_K_M file stores some layers' v projection in Q6_K beside Q4_K q and k: the fused
    projection keeps each part's blocks (StackedLinear) instead of converting them."""

    path = write_gguf(tmp_path / "m.gguf", reference, "llama", qtype="Q4_0", per_tensor={"attn_v": "Q8_0"})
    stored = load_checkpoint(path, inference=True).model
    qkv = stored.layers[0].attn.qkv
    assert isinstance(qkv, StackedLinear) and [type(p) for p in qkv.parts] == [Q4Linear, Q8Linear]
    plain = load_checkpoint(path, precision="fp32").model
    with torch.inference_mode():
        got, want = stored(PROMPT)[0], plain(PROMPT)[0]
    assert (got - want).abs().max() / want.abs().max() < 0.05


@needs_kernels
def test_dtype_converts_one_tensor_at_a_time(reference, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", reference, "llama", qtype="Q4_0")
    model = load_checkpoint(path, inference=True, precision="int8").model
    assert weights_label(model) == "Q8_0"
    assert weights_label(load_checkpoint(path, inference=True).model) == "Q4_0"


def test_an_absurd_window_is_refused_before_reading_with_the_fix(reference, tmp_path):
    """The KV cache of 10^8 positions cannot fit on any machine this runs on: one line, which
    says the window is the problem (not the model), before any weight is read."""
    path = write_gguf(tmp_path / "m.gguf", reference, "llama", metadata={"llama.context_length": (10**9, "UINT32")})
    with pytest.raises(CheckpointError, match=r"KV cache for 100,000,000 tokens.*; --context [0-9,]+ fits") as err:
        load_checkpoint(path, inference=True, context=10**8)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "link.safetensors"])
def test_a_shard_index_cannot_reach_outside_the_folder(tmp_path, shard):
    folder = save_hf_folder(tmp_path / "m", hf_model("llama", seed=3))
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (folder / "model.safetensors").rename(folder / "real.safetensors")
    names = json.loads(json.dumps({"weight_map": {"lm_head.weight": shard, "model.norm.weight": "real.safetensors"}}))
    (folder / "model.safetensors.index.json").write_text(json.dumps(names))
    with pytest.raises(CheckpointError, match="outside the folder") as err:
        load_checkpoint(folder, inference=True)
    assert "\n" not in str(err.value)


def test_a_sharded_folder_loads_tensor_by_tensor(tmp_path):
    """Shards named by the index, each read a tensor at a time: the same logits as transformers."""
    reference = hf_model("llama", seed=3)
    folder = tmp_path / "m"
    reference.save_pretrained(folder, max_shard_size="60KB")
    assert (folder / "model.safetensors.index.json").exists()
    model = load_checkpoint(folder, inference=True).model
    with torch.inference_mode():
        got, want = model(PROMPT)[0], reference(PROMPT).logits[0]
    assert torch.allclose(got, want, atol=1e-4)


def test_stored_blocks_are_used_without_requantizing(tmp_path):
    """A Q8_0 layer holds exactly the file's int8 values and fp16 scales."""
    import gguf

    weights = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    blocks = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    from chatterm.model.cpu.stored import stored_layer

    layer = stored_layer("Q8_0", blocks, (8, 64), None)
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(layer.dequantized().numpy(), want)


@needs_kernels
@pytest.mark.parametrize("qtype, per_tensor", [("Q4_0", {"attn_v": "Q8_0"}), ("Q5_1", {}), ("Q5_1", {"attn_v": "Q8_0"})])
def test_stored_layers_run_in_the_fused_step(reference, tmp_path, monkeypatch, qtype, per_tensor):
    """The fused decode step reads what the layers hold: the parts of a StackedLinear in turn
    (kernels.c's CT_STACKED), Q5_1's per-block offsets (a Q5_K_M file's fallback, beside Q8_0 v
    projections: two parts, one with offsets): a step's logits are the PyTorch path's (to float
    rounding), and so are the greedy tokens after it."""
    import chatterm.model.families.llama as llama
    from chatterm.model import KVCache
    from chatterm.model.cpu.native_blocks import _Plan, _plans
    from test_native_kernels import _decode

    path = write_gguf(tmp_path / "m.gguf", hf_model("qwen2", seed=3), "qwen2", qtype=qtype, per_tensor=per_tensor)
    model = load_checkpoint(path, inference=True).model  # Qwen2: the q/k/v biases split between the parts
    assert isinstance(model.layers[0].attn.qkv, StackedLinear) == bool(per_tensor)

    def step():  # one cached decode step's logits after a prompt
        cache = KVCache.for_model(model)
        with torch.inference_mode():
            model(torch.tensor([[5, 77, 120, 33]]), torch.arange(4), cache)
            return model(torch.tensor([[9]]), torch.tensor([4]), cache)[0, -1]

    fused_step = step()
    fused_ids, _ = _decode(model, [5, 77, 120, 33], 16)
    assert isinstance(_plans.get(model), _Plan)
    monkeypatch.setattr(llama, "llama_decode_step", lambda *args: None)
    plain_step = step()
    plain_ids, _ = _decode(model, [5, 77, 120, 33], 16)
    assert fused_ids == plain_ids and len(set(fused_ids[4:])) > 1
    # Not the logits after 16 steps: there a last-bit difference that moves one activation's 8-bit
    # rounding compounds, by up to ~1% (Q5_0, Q5_1), while one step agrees to ~1e-7.
    assert float((fused_step - plain_step).abs().max()) < 1e-5 * float(plain_step.abs().max())


def test_a_hub_cache_snapshot_loads_and_weights_are_not_left_mapped(tmp_path):
    """Hugging Face's hub cache keeps files in blobs/ and links them from snapshots/<rev>/: that
    layout loads. The weights are copies: truncating the file after loading changes nothing."""
    source = save_hf_folder(tmp_path / "m", hf_model("llama", seed=3).to(torch.bfloat16))
    snapshot = tmp_path / "hub" / "models--t--tiny" / "snapshots" / "abc123"
    blobs = tmp_path / "hub" / "models--t--tiny" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for n, file in enumerate(sorted(source.iterdir())):
        (blobs / f"blob{n}").write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(f"../../blobs/blob{n}")
    model = load_checkpoint(snapshot, inference=True).model
    with torch.inference_mode():
        before = model(PROMPT)[0]
    for blob in blobs.iterdir():  # a file rewritten under a running model (a SIGBUS if still mapped)
        blob.write_bytes(b"")
    with torch.inference_mode():
        assert torch.equal(model(PROMPT)[0], before)


def test_a_quantized_folder_is_refused_in_one_line(tmp_path):
    folder = save_hf_folder(tmp_path / "m", hf_model("llama", seed=3))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(CheckpointError, match=r"quantized Hugging Face folder \(fp8\) is not read") as err:
        load_checkpoint(folder, inference=True)
    assert "\n" not in str(err.value)


@needs_kernels
@pytest.mark.parametrize("precision, kind", [("bf16", Bf16Linear), ("int8", Q8Linear)])
def test_an_untied_embedding_takes_the_precision_asked_for(reference, tmp_path, precision, kind):
    """--dtype bf16 / int8 hold the token embedding in bf16 / 8 bits too, not in fp32."""
    path = write_gguf(tmp_path / "m.gguf", reference, "llama", qtype="Q8_0")
    model = load_checkpoint(path, inference=True, precision=precision).model
    assert isinstance(model.embed_tokens.table, kind)
    assert not [p for p in model.parameters() if p.dim() == 2]
