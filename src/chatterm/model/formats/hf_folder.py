"""What comes with a Hugging Face model folder of a family other than GPT-2 (Llama, Mistral,
Qwen2, ...): which files hold its weights, and its metadata. The weights themselves are read by
safetensors_files.py, a tensor at a time.

What is read:
- `config.json`: the family (`model_type`, `architectures`) and its shape;
- `model.safetensors`, or the shards named by `model.safetensors.index.json`;
- `tokenizer.json` (recorded as a tokenizer spec, built by the engine), and
  `tokenizer_config.json` / `chat_template.jinja`: the Jinja chat template and the special tokens;
- `generation_config.json`: end-of-sequence ids (every one of them stops a reply) and the
  recommended sampling values, exposed as `meta["sampling"]` as transformers samples with them
  (`do_sample: false` is greedy; the repetition penalty covers the whole context).

Every file is read through regular_file.py: a FIFO or device in the folder is one line, never a
read that blocks.

GPT-2 folders keep their own loader in checkpoint.py. Only safetensors weights are read here:
nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...regular_file import NotRegularFileError, read_regular_text
from ..errors import CheckpointError, json_object
from . import MAX_JSON_BYTES

_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def is_hf_family_folder(path: Path) -> bool:
    """A folder with a config.json that declares a family other than GPT-2 (GPT-2 folders are
    checkpoint.py's)."""
    if not path.is_dir() or not (path / "config.json").exists() or (path / "chatterm.json").exists():
        return False
    try:
        raw = json.loads(read_regular_text(path / "config.json", MAX_JSON_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("model_type", "gpt2") != "gpt2"


def hf_family_folder_shards(path: Path) -> list[str]:
    """The safetensors files holding the folder's weights (names as the index gives them:
    safetensors_files.py refuses any that leads outside the folder)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map in the index")
        return sorted(set(weight_map.values()), key=str)  # a non-string name is refused when opened
    if (path / "model.safetensors").exists():
        return ["model.safetensors"]
    raise CheckpointError(
        f"{path}: no model.safetensors or model.safetensors.index.json (pickled .bin weights of this "
        "family are not read; convert them to safetensors)"
    )


def folder_meta(path: Path) -> dict:
    """Name, tokenizer spec, Jinja chat template and recommended sampling values of a folder."""
    model_config = _json(path / "config.json")
    meta: dict = {"name": path.name, "architecture": model_config.get("model_type")}
    tok_config = _json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
    gen_config = _json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    if (path / "tokenizer.json").exists():
        eos = gen_config.get("eos_token_id", model_config.get("eos_token_id"))
        meta["tokenizer"] = {
            "type": "huggingface",
            "path": str(path / "tokenizer.json"),
            "bos_token": _token_text(tok_config.get("bos_token")),
            "eos_token": _token_text(tok_config.get("eos_token")),
            "add_bos_token": bool(tok_config.get("add_bos_token", False)),
            "stop_ids": [int(i) for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)],
        }
    template = _chat_template(path, tok_config)
    if template:
        meta["chat_template_jinja"] = template
    meta.update(_recommended_sampling(gen_config))
    return meta


def _recommended_sampling(gen_config: dict) -> dict:
    """`{"sampling": {...}}` as transformers' `generate()` would sample with this folder: an
    explicit `do_sample: false` is greedy whatever the values say, and its repetition penalty
    looks at the whole context (window 0), not at llama.cpp's last 64 tokens."""
    sampling = {k: gen_config[k] for k in _SAMPLING_KEYS
                if isinstance(gen_config.get(k), (int, float)) and not isinstance(gen_config.get(k), bool)}
    if gen_config.get("do_sample") is False:
        sampling = {k: v for k, v in sampling.items() if k == "repetition_penalty"} | {"temperature": 0}
    if "repetition_penalty" in sampling:
        sampling["repetition_window"] = 0
    return {"sampling": sampling} if sampling else {}


def _chat_template(path: Path, tok_config: dict) -> str | None:
    if (path / "chat_template.jinja").exists():  # transformers >= 4.49 writes it beside the config
        return _text(path / "chat_template.jinja")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # {"content": "<s>", "lstrip": false, ...}
        token = token.get("content")
    return token if isinstance(token, str) else None


def _text(path: Path) -> str:
    try:
        return read_regular_text(path, MAX_JSON_BYTES)
    except NotRegularFileError as e:
        raise CheckpointError(f"{e}; not a model file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it ({e})") from e


def _json(path: Path) -> dict:
    return json_object(_text(path), path)
