"""Tiny real Llama-family models for tests, built with transformers in well under a second.

`byte_bpe()` trains a small byte-level BPE (tokenizers) on a few sentences, with ChatML's special
tokens. `hf_model(kind)` is a random `LlamaForCausalLM` or `Qwen2ForCausalLM` with a fixed seed
and weights scaled up so that greedy decoding has clear winners (a random model at the usual
0.02 has near-uniform logits, and float noise would flip its argmax). `save_hf_folder` writes
it with `save_pretrained` plus the tokenizer and a chat template; `write_gguf` writes it as
llama.cpp would (query/key rows reordered for `llama`), in F32 or a quantized type.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

SENTENCES = [
    "Hello there, how are you today?",
    "The capital of France is Paris.",
    "I like tea and biscuits in the afternoon.",
    "Numbers like 12345 and 2024 appear in text.",
    "Le café est très bon à Paris, n'est-ce pas?",
    "User: hi\nAssistant: hello, friend!",
] * 3
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# SmolLM2's template: a default system prompt when the conversation has none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama 3's shape: a BOS, headers, contents trimmed.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{% set content = '<|im_start|>' + message['role'] + '\n\n' + "
    "message['content'] | trim + '<|im_end|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n\n' }}{% endif %}"
)
# Qwen2.5's shape (also Qwen3's and DeepSeek-R1-Distill-Qwen's opening): it reads messages[0] before
# anything else, so it fails on an empty message list; a default system prompt when none is given.
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Zephyr/TinyLlama's shape: plain-text role markers, the EOS token after each turn.
ZEPHYR = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"
)


def byte_bpe(vocab_size: int = 400):
    """A `tokenizers.Tokenizer`: byte-level BPE with <|endoftext|>, <|im_start|>, <|im_end|> as 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def hf_tokenizer(template: str = CHATML):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=byte_bpe(), bos_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=template
    )


# kind -> (transformers' config class, its model class), by name
KINDS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
         "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
         "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM")}


def hf_model(kind: str = "llama", seed: int = 0, vocab_size: int = 416, tie: bool = False, scale: float = 4.0, **overrides):
    """A random tiny model of `kind` (a KINDS key); `scale` multiplies every weight matrix's init
    so logits are peaked, and norm weights get random values (1 + noise) so a mistake in how
    they are read shows."""
    import transformers

    shape = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        bos_token_id=0, eos_token_id=2,
    )
    if kind not in ("llama", "qwen2"):
        shape["pad_token_id"] = 0  # SmolLM3's default (128004) is outside a tiny vocabulary
    shape.update(overrides)
    torch.manual_seed(seed)
    config_class, model_class = (getattr(transformers, n) for n in KINDS[kind])
    model = model_class(config_class(**shape))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(scale)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape) * 0.1)
            elif name.endswith("norm.weight") and kind not in ("llama", "qwen2"):  # those keep their tests' values
                p.add_(torch.randn(p.shape) * 0.1)
    return model.eval()


def save_hf_folder(folder: Path, model, template: str = CHATML, generation: dict | None = None) -> Path:
    import json

    model.save_pretrained(folder)
    hf_tokenizer(template).save_pretrained(folder)
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows for `llama` files (pairs interleaved within a head)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Hugging Face module names -> llama.cpp's (gguf-py's constants.py); a kind's own spellings in
# GGUF_NAMES_OF, where the same HF name means another norm.
GGUF_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm", "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
GGUF_NAMES_OF = {"gemma3": {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                            "post_feedforward_layernorm": "post_ffw_norm"}}
PERMUTED = ("llama", "smollm3")  # convert_hf_to_gguf's LlamaModel reorders their q/k rows


def write_gguf(path: Path, model, kind: str = "llama", qtype: str = "F32", template: str = CHATML,
               metadata: dict | None = None, per_tensor: dict | None = None) -> Path:
    """The model (and the test tokenizer, and `template`) as a GGUF file, 2-D weights in `qtype`
    (`per_tensor`: {"attn_v": "Q8_0"} gives the tensors of that name another type, as llama.cpp's
    mixed files do), named and transformed as llama.cpp's convert_hf_to_gguf.py does (q/k rows
    reordered for `llama`-style files, Gemma's norms stored with their 1 added); `metadata`
    ({key: (value, GGUFValueType name)}) replaces or adds values, types and all."""
    import gguf

    cfg = model.config
    arch = kind
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or rope["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if getattr(cfg, "head_dim", None) and kind != "phi3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if kind == "gemma3":
        w.add_sliding_window(cfg.sliding_window)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    tok = byte_bpe()
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"[PAD{i}]" for i in range(len(vocab), cfg.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else (5 if t.startswith("[PAD") else 1) for t in tokens])
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_chat_template(template)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    names = {**GGUF_NAMES, **GGUF_NAMES_OF.get(kind, {})}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            name = "output.weight"
        else:
            key = key.removeprefix("model.")
            parts = key.split(".")
            if parts[0] == "layers":
                inner = ".".join(parts[2:-1])
                name = f"blk.{parts[1]}.{names[inner]}.{parts[-1]}"
            else:
                name = f"{names[parts[0]]}.{parts[-1]}"
        data = value.detach().float().numpy()
        if arch in PERMUTED and (".attn_q." in name or ".attn_k." in name):
            data = llama_cpp_permute(data, heads if ".attn_q." in name else kv_heads)
        if kind == "gemma3" and name.endswith("norm.weight"):
            data = data + 1  # Gemma3RMSNorm scales by (1 + w): the converter stores 1 + w
        tensor_type = next((t for part, t in (per_tensor or {}).items() if f".{part}." in name), qtype)
        if data.ndim == 2 and tensor_type != "F32":
            q = gguf.GGMLQuantizationType[tensor_type]
            w.add_tensor(name, gguf.quants.quantize(data, q), raw_dtype=q)
        else:
            w.add_tensor(name, np.ascontiguousarray(data))
    if kind == "phi3":  # the converter's Phi3MiniModel: rotated dims, LongRoPE's factors as tensors
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        if rope.get("rope_type") == "longrope":
            original = rope["original_max_position_embeddings"]
            w.add_rope_scaling_orig_ctx_len(original)
            scale = cfg.max_position_embeddings / original
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
            w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
            w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    if rope.get("rope_type") == "llama3":
        # The converter stores Llama 3.1's scaling as one divisor per frequency: unscaled over
        # scaled, here from transformers' own scaled frequencies.
        scaled = model.model.rotary_emb.inv_freq.double()
        dim = scaled.numel() * 2
        plain = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        w.add_tensor("rope_freqs.weight", (plain / scaled).float().numpy())
    for key, (value, vtype) in (metadata or {}).items():
        w.kv_data[0][key] = gguf.GGUFValue(value=value, type=gguf.GGUFValueType[vtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
