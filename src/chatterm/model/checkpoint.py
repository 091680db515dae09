"""Load and save checkpoints; the format is detected from what is on disk.

Formats read:
1. ours: a folder with `model.safetensors` + `chatterm.json`, or one `.safetensors` file whose
   header metadata carries the same JSON under the key "chatterm". The JSON holds the model
   config, the tokenizer spec, the chat template and training info. No pickle anywhere.
2. nanoGPT `ckpt.pt`: a dict with `model_args` and `model` (keys maybe prefixed `_orig_mod.`).
3. a plain state dict (`.pt`/`.pth`/`.bin`/`.safetensors`) in our/nanoGPT or the textbook's
   naming; shapes are read from the weights, the head count from a sidecar JSON
   (`<name>.json` or `config.json` beside it) or from `n_head=`.
4. a Hugging Face GPT-2 folder: `config.json` + `model.safetensors` or `pytorch_model.bin`.

Pickle-based files are only read with `torch.load(weights_only=True)`, which refuses any object
that is not plain data, so a malicious checkpoint cannot run code. Every failure a user can cause
raises `CheckpointError` with one sentence naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import state_dict as sdmod
from .config import GPTConfig
from .errors import CheckpointError
from .gpt import GPT
from .registry import cap_context

META_FILE = "chatterm.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded model with everything that came with it."""

    model: GPT
    config: GPTConfig
    path: Path
    format: str  # "chatterm", "nanogpt", "state_dict", "huggingface"
    meta: dict = field(default_factory=dict)  # tokenizer spec, chat template, training info

    @property
    def name(self) -> str:
        return self.meta.get("name") or (self.path.stem if self.path.is_file() else self.path.name)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    n_head: int | None = None,
    context: int | None = None,
    progress=None,
) -> Checkpoint:
    """Load any supported checkpoint; weights end up on `device` in `dtype` (default: as stored,
    floats widened to fp32 when stored in half precision on the CPU). `context` caps the context
    window; `progress(what, fraction)` is called while big files load (other families only)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    try:
        family = _read_family(path, context, progress)  # GGUF files, Llama-family HF folders
        if family is not None:
            fmt, model, meta = family
            config, sd = model.config, model.state_dict()
        else:
            fmt, config, sd, meta = _read(path, n_head)
            model = _build(config, sd, path)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot load checkpoint ({_first_line(e)})") from e
    target = dtype or _default_dtype(sd, device)
    model.to(device=device, dtype=target).eval()
    cap_context(model, context)
    return Checkpoint(model=model, config=model.config, path=path, format=fmt, meta=meta)


def save_checkpoint(path: str | os.PathLike, model: GPT, meta: dict | None = None) -> Path:
    """Write our format: `path/model.safetensors` + `path/chatterm.json`, each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # safetensors refuses shared storage; it is re-tied on load
    full_meta = {"format_version": FORMAT_VERSION, **(meta or {}), "model": model.config.to_dict()}
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(sd, tmp))
    _atomic_write(path / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(full_meta, indent=2)))
    return path


# --- reading ---------------------------------------------------------------------------------


def _read_family(path: Path, context, progress):
    """(format, model, meta) when the registry's loaders own this path, else None."""
    from .gguf_format import is_gguf, read_gguf
    from .hf_folder import is_hf_family_folder, read_hf_folder

    if is_gguf(path):
        model, _, meta = read_gguf(path, context, progress)
        return "gguf", model, meta
    if is_hf_family_folder(path):
        model, _, meta = read_hf_folder(path, context, progress)
        return "huggingface", model, meta
    return None


def _read(path: Path, n_head: int | None) -> tuple[str, GPTConfig, dict, dict]:
    if path.is_dir():
        if (path / META_FILE).exists():
            meta = _read_json(path / META_FILE)
            return "chatterm", _config_from(meta.get("model"), path / META_FILE), _read_safetensors(path / WEIGHTS_FILE)[0], meta
        if (path / "config.json").exists() and _hf_weights(path):
            return _read_hf(path)
        if (path / "ckpt.pt").exists():
            return _read(path / "ckpt.pt", n_head)
        raise CheckpointError(
            f"{path}: no model found in this folder (expected {META_FILE}, a Hugging Face config.json "
            "with model.safetensors or pytorch_model.bin, or a nanoGPT ckpt.pt)"
        )
    if path.suffix == ".safetensors":
        sd, header = _read_safetensors(path)
        if "chatterm" in header:
            meta = json.loads(header["chatterm"])
            return "chatterm", _config_from(meta.get("model"), path), sd, meta
        return _plain(path, sd, n_head)
    obj = _torch_load(path)
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:
        sd = sdmod.strip_prefixes(obj["model"])
        config = _config_from(obj["model_args"], path)
        return "nanogpt", config, sd, {"training": {"iter_num": obj.get("iter_num")}}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _plain(path, obj, n_head)
    raise CheckpointError(f"{path}: not a model checkpoint (no state dict of tensors inside)")


def _plain(path: Path, sd: dict, n_head: int | None) -> tuple[str, GPTConfig, dict, dict]:
    sd = sdmod.strip_prefixes(sd)
    sidecar = _sidecar_config(path)
    if sdmod.is_textbook(sd):
        sd = sdmod.from_textbook(sd)
    elif "wte.weight" in sd or "h.0.attn.c_attn.weight" in sd:
        sd = sdmod.from_hf(sd)  # a bare GPT2Model state dict
    if "transformer.wte.weight" not in sd:
        raise CheckpointError(f"{path}: not a GPT state dict (no token embedding 'transformer.wte.weight')")
    heads = n_head or sidecar.get("n_head")
    if heads is None:
        raise CheckpointError(
            f"{path}: the number of attention heads is unknown; put a JSON config with n_head beside "
            f"it ({path.with_suffix('.json').name}) or pass --n-head"
        )
    eps = sidecar.get("layer_norm_eps")
    return "state_dict", sdmod.infer_config(sd, heads, layer_norm_eps=eps), sd, {}


def _read_hf(path: Path) -> tuple[str, GPTConfig, dict, dict]:
    raw = _read_json(path / "config.json")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r} is not GPT-2")
    weights = _hf_weights(path)
    sd = _read_safetensors(weights)[0] if weights.suffix == ".safetensors" else _torch_load(weights)
    sd = sdmod.from_hf(sd)
    cfg = sdmod.normalize_config_keys(raw)
    cfg.setdefault("bias", True)
    config = _config_from(cfg, path / "config.json")
    return "huggingface", config, sd, {"name": path.name}


def _hf_weights(path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    return None


def _sidecar_config(path: Path) -> dict:
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.exists():
            return sdmod.normalize_config_keys(_read_json(candidate))
    return {}


def _config_from(raw, where: Path) -> GPTConfig:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: the model config is missing")
    try:
        return GPTConfig.from_dict(sdmod.normalize_config_keys(raw))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from e


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_first_line(e)})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, header
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(e)})") from e


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # the pickle names a Python callable or class: code we refuse to run
            raise CheckpointError(
                f"{path}: refused: the file asks to run Python code ({found.group(1)}), and chatterm never "
                "unpickles anything but plain tensors; convert it to safetensors where you trust it"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch weights file, or corrupt (unreadable pickle)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch file ({_first_line(e)})") from e


# --- building --------------------------------------------------------------------------------


def _build(config: GPTConfig, sd: dict, path: Path) -> GPT:
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} (and {len(unexpected) - 1} more)")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(sd[key].shape)}, the config needs {tuple(shape)}"
            )
    model.load_state_dict(sd, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    return model


def _default_dtype(sd: dict, device) -> torch.dtype:
    stored = next(iter(sd.values())).dtype
    if torch.device(device).type == "cpu" and stored in (torch.float16, torch.bfloat16):
        return torch.float32  # half precision is slow on most CPUs; memory is not the problem here
    return stored if stored.is_floating_point else torch.float32


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model is meant to be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
