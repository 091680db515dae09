"""The families beyond Llama/Qwen2 (Qwen3, SmolLM3, Gemma 3, Phi-3) and Llama 3's rope scaling:
a tiny random transformers model with a fixed seed, loaded from its Hugging Face folder and from
a GGUF file written as llama.cpp's converter writes it, gives transformers' logits and greedy
tokens exactly; the fused CPU decode step (Qwen3's q/k norms, SmolLM3's layers without
rotation, Phi-4-mini's partial rotation, Gemma 3's sliding windows, local rotary tables, post
norms and GELU gate) decodes as the PyTorch blocks do."""

import math

import pytest
import torch

from chatterm.engine.generator import Generator
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import load_checkpoint
from chatterm.model.families import family_of
from chatterm.session.backends.local import LocalBackend
from tiny_llama import hf_model, save_hf_folder, write_gguf

PROMPT = [5, 77, 120, 33, 260, 9, 41, 300, 17, 88, 140, 61]
STEPS = 30

# case -> (our family, transformers overrides): each a config that exercises what the family adds
CASES = {
    "qwen3": ("qwen3", dict(head_dim=24)),  # a head width that is not hidden / heads, as Qwen3's
    "smollm3": ("smollm3", dict(num_hidden_layers=4)),  # the fourth layer skips the rotary embedding
    "gemma3": ("gemma3", dict(num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1000000.0}})),
    # Phi-4-mini's shape: 3/4 of each head rotated, LongRoPE (short factors within the trained window)
    "phi3": ("phi3", dict(sliding_window=None, tie_word_embeddings=True, original_max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
        "original_max_position_embeddings": 64, "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
        "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]})),
    # Phi-3-mini's: whole heads rotated, so the fused decode step applies, LongRoPE's scaled cos/sin and all
    "phi3-mini": ("phi3", dict(sliding_window=None, original_max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
        "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5], "long_factor": [1.0] * 8})),
    "llama3-rope": ("llama", dict(max_position_embeddings=256, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
}


# What loading a case takes besides: Phi-3 within its trained window (LongRoPE's short factors,
# which transformers uses for sequences that fit it)
LOAD_WITH = {"phi3": dict(context=64), "phi3-mini": dict(context=64)}


def kind_of(case: str) -> str:
    return {"llama3-rope": "llama", "phi3-mini": "phi3"}.get(case, case)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(case, transformers model, its folder, its GGUF file)."""
    _, overrides = CASES[request.param]
    kind = kind_of(request.param)
    model = hf_model(kind, seed=5, **overrides)
    where = tmp_path_factory.mktemp(request.param)
    folder = save_hf_folder(where / "hf", model)
    return request.param, model, folder, write_gguf(where / "m.gguf", model, kind)


def transformers_greedy(model, n=STEPS):
    with torch.inference_mode():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def our_greedy(model, tokenizer, n=STEPS):
    """Prefill, then one cached decode step per token (the fused step where it applies)."""
    gen = Generator(model, tokenizer)
    logits, _ = gen.prefill(PROMPT)
    tokens = []
    for _ in range(n):
        tokens.append(int(logits.argmax()))
        logits = gen.decode(tokens[-1])
    return tokens


@pytest.mark.parametrize("source", ["folder", "gguf"])
def test_logits_and_greedy_tokens_match_transformers(case, source):
    name, reference, folder, gguf_file = case
    ckpt = load_checkpoint(folder if source == "folder" else gguf_file, inference=True, **LOAD_WITH.get(name, {}))
    assert family_of(ckpt.model).name == CASES[name][0]
    with torch.inference_mode():
        want = reference(torch.tensor([PROMPT])).logits[0]
        got = ckpt.model(torch.tensor([PROMPT]))[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert our_greedy(ckpt.model, open_tokenizer(ckpt.meta["tokenizer"])) == transformers_greedy(reference)


def test_every_family_loads_without_a_slower_path_note(case):
    """Every family has the fused CPU decode step: none says it runs on the PyTorch path."""
    name, _, folder, _ = case
    backend = LocalBackend.load(folder, **LOAD_WITH.get(name, {}))
    assert not [w for w in backend.warnings if "PyTorch path" in w]
    assert backend.generator.model.decode_note is None


def test_fused_decode_step_and_pytorch_path_agree(case, tmp_path):
    """Rotary tables (Llama 3's scaled ones, LongRoPE's) reach the fused step as they reach the
    PyTorch blocks."""
    from chatterm.model.cpu import native

    name, reference, _, _ = case
    if native.library() is None:
        pytest.skip("chatterm's CPU kernels are not built here")
    # Q8_0: the fused step runs on chatterm's kernels (F32 layers are oneDNN's)
    ckpt = load_checkpoint(write_gguf(tmp_path / "q8.gguf", reference, kind_of(name), qtype="Q8_0"), inference=True,
                           **LOAD_WITH.get(name, {}))
    _fused_decodes_as_pytorch(ckpt.model, open_tokenizer(ckpt.meta["tokenizer"]))


def _fused_decodes_as_pytorch(model, tokenizer):
    """Decode steps by token id on the fused CPU step give the PyTorch blocks' logits."""
    from chatterm.model.cpu import native_blocks

    assert model.decode_note is None
    fused, plain = Generator(model, tokenizer), Generator(model, tokenizer)
    fused.prefill(PROMPT)
    plain.prefill(PROMPT)
    for token in (7, 99, 250, 3, 12):  # past the tiny windows of Gemma 3's local layers
        a = fused.decode(token)
        model.decode_note = "the PyTorch path, for this test"  # an instance attribute: this model only
        b = plain.decode(token)
        del model.decode_note
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), (a - b).abs().max()
    plan = native_blocks._plans.get(model)
    assert isinstance(plan, native_blocks._Plan) and plan.x is not None  # the fused step ran, by token id


def test_gemma3_fused_step_takes_the_attention_scale(tmp_path):
    """query_pre_attn_scalar other than the head width (GGUF files always have the head width)."""
    reference = hf_model("gemma3", seed=3, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=40,
                         sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2)
    ckpt = load_checkpoint(save_hf_folder(tmp_path, reference), precision="int8", inference=True)
    _fused_decodes_as_pytorch(ckpt.model, open_tokenizer(ckpt.meta["tokenizer"]))


def test_gemma3_query_pre_attn_scalar_and_global_layers_from_a_folder(tmp_path):
    """A scale other than the head width (llama.cpp's GGUF files always use the head width), and
    the v4 spelling of a config (sliding_window_pattern, rope_local_base_freq) read as transformers does."""
    import json

    reference = hf_model("gemma3", seed=7, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=40, sliding_window=3,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    folder = save_hf_folder(tmp_path, reference)
    raw = json.loads((folder / "config.json").read_text())
    local_theta = raw.pop("rope_parameters")["sliding_attention"]["rope_theta"]
    raw.pop("layer_types")
    (folder / "config.json").write_text(json.dumps({**raw, "rope_theta": 1e6, "rope_local_base_freq": local_theta,
                                                    "sliding_window_pattern": 2}))
    ckpt = load_checkpoint(folder, inference=True)
    assert [b.attn.window for b in ckpt.model.layers] == [3, 0, 3, 0]
    with torch.inference_mode():
        want = reference(torch.tensor([PROMPT])).logits[0]
        got = ckpt.model(torch.tensor([PROMPT]))[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_a_base_model_chats_from_bos_when_its_tokenizer_asks(tmp_path):
    """Gemma 3 270M has no chat template: chatterm's User:/Assistant: transcript, which must
    start at BOS as the model's text did in training (without it Gemma answers garbage)."""
    from chatterm.session.chats.conversation import Conversation
    from chatterm.session.prompts.prompt import PromptBuilder
    from chatterm.session.prompts.template import ChatTemplate

    path = write_gguf(tmp_path / "m.gguf", hf_model("gemma3", seed=5, **CASES["gemma3"][1]), "gemma3",
                      metadata={"tokenizer.ggml.add_bos_token": (True, "BOOL")})
    tokenizer = open_tokenizer(load_checkpoint(path).meta["tokenizer"])
    conversation = Conversation()
    conversation.add("user", "hi")
    ids = PromptBuilder(tokenizer, ChatTemplate(), 256).build(conversation, 16).ids
    assert ids[0] == tokenizer.bos_id == 0 and ids[1:3] != [0, 0]
    conversation.system = "Be brief."
    assert PromptBuilder(tokenizer, ChatTemplate(), 256).build(conversation, 16).ids.count(0) == 1


def test_phi3_takes_longropes_long_factors_for_a_window_past_the_trained_one(tmp_path):
    reference = hf_model("phi3", seed=5, **CASES["phi3"][1])
    folder, gguf_file = save_hf_folder(tmp_path / "hf", reference), write_gguf(tmp_path / "m.gguf", reference, "phi3")
    rope = reference.config.rope_parameters
    for path in (folder, gguf_file):
        assert load_checkpoint(path, context=64).config.rope_scaling["factors"] == pytest.approx(rope["short_factor"])
        config = load_checkpoint(path, context=128).config
        assert config.rope_scaling["factors"] == pytest.approx(rope["long_factor"]) and config.rotary_dims == 12
        assert config.rope_attention_factor == pytest.approx((1 + math.log(256 / 64) / math.log(64)) ** 0.5)
