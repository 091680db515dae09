"""GGUF files written with gguf.GGUFWriter: the same greedy text as transformers (F32), close
logits (Q8_0), the embedded tokenizer and template, and one-line errors for what we do not read."""

import numpy as np
import pytest
import torch

from chatterm.engine.tokenizers import open_tokenizer
from chatterm.model import GPT, CheckpointError, load_checkpoint
from chatterm.model.formats.gguf import GGUFFile
from chatterm.model.families.llama import Llama
from chatterm.session.prompts.jinja_template import JinjaPromptBuilder
from chatterm.session.backends.local import LocalBackend
from helpers import tiny_model
from tiny_llama import CHATML, byte_bpe, hf_model, write_gguf

PROMPT = [5, 77, 120, 33, 260, 9, 41]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def reference(request):
    return request.param, hf_model(request.param, seed=3)


def greedy(model, ids, n):
    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[len(ids):]


def test_f32_file_gives_transformers_greedy_output(reference, tmp_path):
    kind, hf = reference
    ckpt = load_checkpoint(write_gguf(tmp_path / "m.gguf", hf, kind))
    assert isinstance(ckpt.model, Llama) and ckpt.format == "gguf"
    with torch.inference_mode():
        want = hf.generate(torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.allclose(ckpt.model(torch.tensor([PROMPT]))[0], hf(torch.tensor([PROMPT])).logits[0], atol=1e-4)
    assert greedy(ckpt.model, PROMPT, 30) == want[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("qtype,tolerance", [("Q8_0", 0.05), ("Q4_0", 0.5)])
def test_quantized_file_gives_close_logits(reference, tmp_path, qtype, tolerance):
    kind, hf = reference
    ckpt = load_checkpoint(write_gguf(tmp_path / "q.gguf", hf, kind, qtype=qtype))
    with torch.inference_mode():
        got = ckpt.model(torch.tensor([PROMPT]))[0]
        want = hf(torch.tensor([PROMPT])).logits[0]
    scale = want.abs().max()
    assert (got - want).abs().max() / scale < tolerance


def test_dequantization_agrees_with_the_original_weights(tmp_path):
    import gguf

    rows = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "w.gguf"), "llama")
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "F16", "BF16"):
        q = gguf.GGMLQuantizationType[name]
        writer.add_tensor(name, gguf.quants.quantize(rows, q), raw_dtype=q)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    f = GGUFFile(tmp_path / "w.gguf")
    for name, tolerance in (("Q8_0", 0.02), ("Q4_0", 0.3), ("Q4_1", 0.3), ("Q5_0", 0.15), ("F16", 1e-3), ("BF16", 1e-2)):
        got = f.tensor(name)
        assert got.shape == (8, 64)
        assert float((got - torch.from_numpy(rows)).abs().max()) < tolerance * float(np.abs(rows).max()), name
    f.close()


def test_embedded_tokenizer_and_template_work_like_the_folder(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", hf_model("qwen2", seed=3), "qwen2")
    backend = LocalBackend.load(path)
    assert isinstance(backend.prompts, JinjaPromptBuilder) and backend.template.source == CHATML
    reference = byte_bpe()
    text = "Hello there, le café à Paris! 12345 <|im_end|>"
    reference.encode_special_tokens = True
    assert backend.tokenizer.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert backend.tokenizer.decode(backend.tokenizer.encode(text)) == text
    assert backend.tokenizer.stop_ids == {2}


def test_gpt2_gguf_loads_as_our_gpt(tmp_path):
    import gguf

    model = tiny_model(seed=2)
    cfg = model.config
    writer = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    writer.add_context_length(cfg.block_size); writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer); writer.add_head_count(cfg.n_head); writer.add_layer_norm_eps(cfg.layer_norm_eps)
    names = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm", "ln_1": "attn_norm", "attn.c_attn": "attn_qkv",
             "attn.c_proj": "attn_output", "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        parts = key.removeprefix("transformer.").split(".")
        if parts[0] == "h":
            name = f"blk.{parts[1]}.{names['.'.join(parts[2:-1])]}.{parts[-1]}"
        else:
            name = f"{names[parts[0]]}.{parts[-1]}"
        writer.add_tensor(name, value.detach().numpy().copy())
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    ckpt = load_checkpoint(tmp_path / "g.gguf", context=64)
    assert isinstance(ckpt.model, GPT) and ckpt.config.block_size == 64
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        assert torch.allclose(ckpt.model(ids), model(ids), atol=1e-5)


def test_unsupported_architecture_and_quantization_are_named(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "mamba")
    writer.add_tensor("x", np.zeros((2, 32), np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(CheckpointError, match="architecture 'mamba' is not supported") as err:
        load_checkpoint(tmp_path / "a.gguf")
    assert "\n" not in str(err.value)
    path = write_gguf(tmp_path / "m.gguf", hf_model("llama", seed=3), "llama")
    raw = bytearray(path.read_bytes())
    f = GGUFFile(path)
    name = "blk.0.attn_q.weight"
    f.close()
    # rewrite that tensor's type id (F32 = 0) to I32 (26), an integer type no model weight has
    key = name.encode()
    at = raw.index(key) + len(key)
    n_dims = int.from_bytes(raw[at : at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    raw[type_at : type_at + 4] = (26).to_bytes(4, "little")
    (tmp_path / "iq.gguf").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="quantization type I32 is not supported"):
        load_checkpoint(tmp_path / "iq.gguf")


def test_sentencepiece_vocabulary_from_gguf():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "t", "h", "e", "c", "a", "he", "▁t", "▁the", "at", "▁c", "▁cat"]
    types = [2, 3, 3] + [6] * 256 + [1] * 12
    spec = {"type": "gguf", "model": "llama", "tokens": tokens, "token_types": types, "scores": [0.0] * len(tokens),
            "bos_id": 1, "eos_id": 2, "add_space_prefix": True}
    tok = open_tokenizer(spec)
    ids = tok.encode("the cat é")
    assert tokens.index("▁the") in ids and tokens.index("▁cat") in ids
    assert tok.decode(ids) == " the cat é"  # SentencePiece's prefix space is part of the first token
    assert tok.token_bytes(tokens.index("▁the")) == b" the" and tok.token_bytes(3 + 0xC3) == b"\xc3"
    assert tok.bos_id == 1 and tok.stop_ids == {2}
    assert tok.encode("</s>") != [2]  # typed markers stay text


def _sentencepiece_spec(extra: list[str] = ()) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "t", "h", "e", "c", "a", "he", "▁t",
                                                                              "▁the", "at", "▁c", "▁cat", *extra]
    types = [2, 3, 3] + [6] * 256 + [1] * (12 + len(extra))
    return {"type": "gguf", "model": "llama", "tokens": tokens, "token_types": types, "bos_id": 1, "eos_id": 2}


def test_sentencepiece_merges_are_kept_in_the_cache_and_checked(tmp_path, monkeypatch):
    """Derived once, read back on the next load; a damaged file, or one of another vocabulary, is
    derived again (and rewritten); a cache folder that cannot be written costs only time."""
    from chatterm.engine import gguf_tokenizer

    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path / "cache"))
    derived = []
    derive = gguf_tokenizer._sentencepiece_merges
    monkeypatch.setattr(gguf_tokenizer, "_sentencepiece_merges", lambda *a: derived.append(1) or derive(*a))
    text = "the cat at the hat"
    want = open_tokenizer(_sentencepiece_spec()).encode(text)
    assert len(derived) == 1 and tokens_of(want) == ["▁the", "▁cat", "▁", "at", "▁the", "▁", "h", "at"]
    [cached] = (tmp_path / "cache" / "tokenizers").iterdir()
    assert open_tokenizer(_sentencepiece_spec()).encode(text) == want and len(derived) == 1  # read back
    open_tokenizer(_sentencepiece_spec(["ca"]))  # another vocabulary: its own file
    assert len(derived) == 2 and len(list(cached.parent.iterdir())) == 2
    data = bytearray(cached.read_bytes())
    data[-4] ^= 1  # the last right id, one off: still a piece of the vocabulary
    cached.write_bytes(bytes(data))
    assert open_tokenizer(_sentencepiece_spec()).encode(text) == want and len(derived) == 3
    assert open_tokenizer(_sentencepiece_spec()).encode(text) == want and len(derived) == 3  # rewritten whole
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CHATTERM_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a file: cannot be made
    assert open_tokenizer(_sentencepiece_spec()).encode(text) == want and len(derived) == 4


def tokens_of(ids: list[int]) -> list[str]:
    return [_sentencepiece_spec()["tokens"][i] for i in ids]


@pytest.mark.parametrize("keep", [10, 200, 5000])
def test_truncated_file_is_one_line(tmp_path, keep):
    path = write_gguf(tmp_path / "m.gguf", hf_model("qwen2", seed=3), "qwen2")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match="cut.gguf: ") as err:
        load_checkpoint(tmp_path / "cut.gguf")
    assert "\n" not in str(err.value)
