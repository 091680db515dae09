"""Llama-family models from Hugging Face folders: the same logits and greedy text as transformers."""

import json

import pytest
import torch

from chatterm.engine.generator import Generator
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import CheckpointError, KVCache, load_checkpoint, pack_linears
from chatterm.model.families.llama import Llama, LlamaConfig, rotary_frequencies
from chatterm.session.backends.local import LocalBackend
from tiny_llama import SMOLLM2, hf_model, save_hf_folder

PROMPT = [5, 77, 120, 33, 260, 9, 41]


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-tied"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, its saved folder) for each family."""
    kind = request.param.removesuffix("-tied")
    model = hf_model(kind, seed=3, tie=request.param.endswith("tied"))
    folder = save_hf_folder(tmp_path_factory.mktemp(request.param), model, template=SMOLLM2,
                            generation={"eos_token_id": [2, 0], "temperature": 0.6, "top_p": 0.9})
    return model, folder


def test_logits_match_transformers(hf_pair):
    reference, folder = hf_pair
    ckpt = load_checkpoint(folder)
    assert isinstance(ckpt.model, Llama) and ckpt.format == "huggingface"
    with torch.inference_mode():
        want = reference(torch.tensor([PROMPT])).logits[0]
        got = ckpt.model(torch.tensor([PROMPT]))[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_greedy_continuation_matches_transformers_generate(hf_pair):
    reference, folder = hf_pair
    ckpt = load_checkpoint(folder)
    pack_linears(ckpt.model)  # the packed oneDNN linears must apply and agree
    tokenizer = open_tokenizer(ckpt.meta["tokenizer"])
    with torch.inference_mode():
        out = reference.generate(torch.tensor([PROMPT]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(PROMPT):].tolist()
    gen = Generator(ckpt.model, tokenizer)
    logits, _ = gen.prefill(PROMPT)
    ours = []
    for _ in range(40):
        token = int(logits.argmax())
        ours.append(token)
        logits = gen.decode(token)
    assert ours == out


def test_kv_cache_holds_only_the_kv_heads_and_cached_equals_uncached(hf_pair):
    _, folder = hf_pair
    model = load_checkpoint(folder).model
    cache = KVCache.for_model(model)
    assert cache.keys.shape[2] == model.config.n_kv_head == 2
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        full = model(ids)[0]
        first = model(ids[:, :4], torch.arange(4), cache)
        rest = model(ids[:, 4:], torch.arange(4, len(PROMPT)), cache)  # a block after a cached prefix
    assert torch.allclose(torch.cat([first[0], rest[0]]), full, atol=1e-5)


def test_folder_metadata_gives_stop_ids_template_and_sampling(hf_pair):
    _, folder = hf_pair
    meta = load_checkpoint(folder).meta
    assert meta["sampling"] == {"temperature": 0.6, "top_p": 0.9}
    assert "<|im_start|>" in meta["chat_template_jinja"]
    tok = open_tokenizer(meta["tokenizer"])
    assert tok.stop_ids == {2, 0} and tok.eot_id == 2


@pytest.mark.parametrize("generation, recommended", [
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2},
     {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "repetition_window": 0}),
    ({"do_sample": False, "temperature": 0.7, "top_k": 20, "repetition_penalty": 1.2},
     {"temperature": 0, "repetition_penalty": 1.2, "repetition_window": 0}),
    ({"do_sample": False}, {"temperature": 0}),
    ({"temperature": True, "top_k": "40"}, None),
])
def test_generation_config_is_recommended_as_transformers_samples_with_it(tmp_path, generation, recommended):
    """`do_sample: false` makes transformers' generate() greedy whatever the values say, and its
    repetition penalty looks at the whole context: the recommendation says the same, so
    `--temperature 0`-free runs of such a folder match transformers' own."""
    folder = save_hf_folder(tmp_path / "m", hf_model("llama", seed=1), generation=generation)
    assert load_checkpoint(folder).meta.get("sampling") == recommended


def test_context_is_the_configs_capped_by_the_setting(hf_pair):
    _, folder = hf_pair
    assert load_checkpoint(folder).config.block_size == 256
    capped = load_checkpoint(folder, context=64)
    assert capped.config.block_size == 64 and capped.model.rope_cos.shape[0] == 64
    backend = LocalBackend.load(folder, context=64)
    assert backend.info.context_window == 64 and backend.generator.cache.max_len == 64


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    reference = hf_model("llama", seed=5, rope_scaling=scaling, rope_theta=500000.0)
    folder = save_hf_folder(tmp_path / "l3", reference)
    ckpt = load_checkpoint(folder)
    assert ckpt.config.rope_scaling["rope_type"] == "llama3"
    ids = torch.arange(3, 203).remainder(400).unsqueeze(0)  # 200 positions: past the original 64
    with torch.inference_mode():
        assert torch.allclose(ckpt.model(ids)[0], reference(ids).logits[0], atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_is_one_line_naming_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="architecture 'mamba' is not supported") as err:
        load_checkpoint(tmp_path)
    assert "\n" not in str(err.value)


def test_unknown_rope_scaling_is_refused_by_name():
    with pytest.raises(ValueError, match="'yarn'"):
        LlamaConfig(n_layer=1, n_head=2, n_kv_head=1, n_embd=8, intermediate_size=8, rope_scaling={"rope_type": "yarn"})
    cfg = LlamaConfig(n_layer=1, n_head=2, n_kv_head=1, n_embd=16, intermediate_size=8)
    assert rotary_frequencies(cfg).shape == (4,)


def test_chat_through_the_backend_stops_at_end_of_turn(hf_pair):
    from chatterm.session import ChatSession, Conversation
    from chatterm.engine.events import Finished

    _, folder = hf_pair
    backend = LocalBackend.load(folder)
    session = ChatSession(backend, SamplingSettings(temperature=0, max_new_tokens=30), Conversation())
    done = [e for e in session.send("Hello there") if isinstance(e, Finished)][-1]
    assert done.stop_reason in ("eos", "length") and done.error is None


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("form", ["folder", "gguf"])
def test_chatterm_generate_prints_transformers_greedy_text(kind, form, tmp_path, capsys):
    from chatterm.cli import main
    from chatterm.session.sanitize import printable
    from tiny_llama import hf_tokenizer, write_gguf

    tokenizer = hf_tokenizer()
    # no rows past the tokenizer's vocabulary: we never sample those ids, transformers would
    reference = hf_model(kind, seed=3, vocab_size=len(tokenizer))
    if form == "folder":
        path = save_hf_folder(tmp_path / "m", reference, generation={"eos_token_id": [2, 0]})
    else:
        path = write_gguf(tmp_path / "m.gguf", reference, kind)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stops = [2, 0] if form == "folder" else [2]  # generation_config.json's list; the GGUF's EOS
    with torch.inference_mode():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=stops, pad_token_id=0)
    new = out[0, len(ids):].tolist()
    new = new[: next((n for n, i in enumerate(new) if i in stops), len(new))]  # up to the end of turn
    capsys.readouterr()
    flags = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "24"]  # plain greedy
    assert main(["generate", str(path), "--prompt", prompt, *flags]) == 0
    assert capsys.readouterr().out == printable(tokenizer.decode(new)) + "\n"


def test_generate_with_no_flags_samples_as_transformers_does_with_the_folder(tmp_path, capsys):
    """The folder's generation_config.json says greedy with a repetition penalty: with no
    sampling flag, `chatterm generate` prints what transformers' generate() gives that folder
    (the penalty over the whole context, not the last 64 tokens)."""
    from chatterm.cli import main
    from chatterm.session.sanitize import printable
    from tiny_llama import hf_tokenizer

    tokenizer = hf_tokenizer()
    reference = hf_model("llama", seed=3, vocab_size=len(tokenizer))
    generation = {"do_sample": False, "temperature": 0.8, "repetition_penalty": 1.5, "eos_token_id": [2]}
    path = save_hf_folder(tmp_path / "m", reference, generation=generation)
    prompt = "The capital of France is the capital of France is"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=80, do_sample=False, repetition_penalty=1.5,
                                 eos_token_id=[2], pad_token_id=0)
    new = out[0, len(ids):].tolist()
    new = new[: next((n for n, i in enumerate(new) if i == 2), len(new))]
    capsys.readouterr()
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "80"]) == 0
    assert capsys.readouterr().out == printable(tokenizer.decode(new)) + "\n"


def test_generate_starts_at_bos_when_the_tokenizer_asks_for_it(tmp_path, capsys):
    """Llama's SentencePiece tokenizers set add_bos_token: transformers then starts every text at
    BOS, and a completion must too, or its greedy text differs."""
    import json

    from chatterm.cli import main
    from chatterm.session.sanitize import printable
    from tiny_llama import hf_tokenizer

    tokenizer = hf_tokenizer()
    reference = hf_model("llama", seed=3, vocab_size=len(tokenizer))
    path = save_hf_folder(tmp_path / "m", reference, generation={"eos_token_id": [2]})
    config_file = path / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "add_bos_token": True}))
    prompt = "The capital of France is"
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        # BOS is id 0, the pad id too: without an explicit mask transformers would mask BOS out.
        out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=24, do_sample=False, eos_token_id=[2], pad_token_id=0)
    new = out[0, len(ids):].tolist()
    new = new[: next((n for n, i in enumerate(new) if i == 2), len(new))]
    capsys.readouterr()
    flags = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "24"]
    assert main(["generate", str(path), "--prompt", prompt, *flags]) == 0
    assert capsys.readouterr().out == printable(tokenizer.decode(new)) + "\n"
