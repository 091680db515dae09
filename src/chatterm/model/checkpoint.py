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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write, remove_stray_temporaries
from ..regular_file import NotRegularFileError, kind_of, open_regular, read_regular_text
from . import native
from . import state_dict as sdmod
from .config import GPTConfig
from .errors import CheckpointError, json_object, reading
from .errors import first_line as _first_line
from .gpt import GPT
from .memory import check_fits
from .registry import ARCHITECTURES, build_model, cap_context

META_FILE = "chatterm.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 64 * 1024 * 1024  # a config or tokenizer file; bigger is not one


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
    _check_kind(path, folder_ok=True)
    element_size = dtype.itemsize if dtype is not None else 4  # "as stored" is fp32 on the CPU

    def fits(config: GPTConfig, already_loaded: int = 0) -> None:
        check_fits(config, element_size, str(device), path, already_loaded=already_loaded)

    with reading(path):
        family = _read_family(path, context, progress, fits)  # GGUF files, Llama-family HF folders
        if family is not None:
            fmt, model, meta = family
            config, sd = model.config, model.state_dict()
        else:
            fmt, config, sd, meta = _read(path, n_head, fits)
            fits(config, sum(t.numel() * t.element_size() for t in sd.values()))
            model = _build(config, sd, path)
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
    for name in (WEIGHTS_FILE, META_FILE):  # what an interrupted save here left (can be GBs)
        remove_stray_temporaries(path / name)
    # 0644 for new files: mkstemp makes them private, and a model is meant to be shared
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(sd, tmp), new_mode=0o644)
    atomic_write(path / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(full_meta, indent=2)), new_mode=0o644)
    return path


# --- reading ---------------------------------------------------------------------------------


def _read_family(path: Path, context, progress, fits):
    """(format, model, meta) when the registry's loaders own this path, else None. `fits(config)`
    is called before any weight is read."""
    from .gguf_format import is_gguf, read_gguf
    from .hf_folder import is_hf_family_folder, read_hf_folder

    if is_gguf(path):
        model, _, meta = read_gguf(path, context, progress, fits)
        return "gguf", model, meta
    if is_hf_family_folder(path):
        model, _, meta = read_hf_folder(path, context, progress, fits)
        return "huggingface", model, meta
    return None


def _read(path: Path, n_head: int | None, fits) -> tuple[str, GPTConfig, dict, dict]:
    """(format, config, state dict, meta). `fits(config)` is called as soon as the config is
    known, before the weights are read where the format allows."""
    if path.is_dir():
        if (path / META_FILE).exists():
            meta = _read_json(path / META_FILE)
            config = _config_from(meta.get("model"), path / META_FILE)
            fits(config)
            return "chatterm", config, _read_safetensors(path / WEIGHTS_FILE)[0], meta
        if (path / "config.json").exists() and _hf_weights(path):
            return _read_hf(path, fits)
        if (path / "ckpt.pt").exists():
            return _read(path / "ckpt.pt", n_head, fits)
        raise CheckpointError(
            f"{path}: no model found in this folder (expected {META_FILE}, a Hugging Face config.json "
            "with model.safetensors or pytorch_model.bin, or a nanoGPT ckpt.pt)"
        )
    if path.suffix == ".safetensors":
        header = _safetensors_metadata(path)
        if "chatterm" in header:
            meta = json_object(header["chatterm"], f"{path} (its 'chatterm' metadata)")
            config = _config_from(meta.get("model"), path)
            fits(config)
            return "chatterm", config, _read_safetensors(path)[0], meta
        return _plain(path, _read_safetensors(path)[0], n_head)
    obj = _torch_load(path)
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:
        sd = _tensors(obj["model"], path, "its 'model' entry")
        config = _config_from(obj["model_args"], path)
        return "nanogpt", config, sdmod.strip_prefixes(sd), {"training": {"iter_num": obj.get("iter_num")}}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _plain(path, _tensors(obj, path, "it"), n_head)
    raise CheckpointError(f"{path}: not a model checkpoint (no state dict of tensors inside)")


def _tensors(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    """`obj` if it is a non-empty dict of name -> tensor, else one clear error."""
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {what} is not a state dict (a dict of tensors) but {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: {what} is not a state dict: entry {str(key)[:60]!r} is {type(value).__name__}, not a tensor"
            )
    return obj


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


def _read_hf(path: Path, fits) -> tuple[str, GPTConfig, dict, dict]:
    raw = _read_json(path / "config.json")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type {str(raw.get('model_type'))[:40]!r} is not GPT-2")
    cfg = sdmod.normalize_config_keys(raw)
    cfg.setdefault("bias", True)
    config = _config_from(cfg, path / "config.json")
    fits(config)
    weights = _hf_weights(path)
    sd = _read_safetensors(weights)[0] if weights.suffix == ".safetensors" else _torch_load(weights)
    sd = sdmod.from_hf(_tensors(sd, weights, "it"))
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
        raise CheckpointError(f"{where}: bad model config ({_first_line(e)})") from e


def _check_kind(path: Path, *, folder_ok: bool = False) -> None:
    """Refuse before opening anything that is not a regular file (or a folder where one is
    allowed): opening a FIFO blocks until someone writes to it, and a device never ends."""
    try:
        kind = kind_of(os.stat(path).st_mode)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or folder") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror})") from None
    if kind is not None and not (folder_ok and kind == "a folder"):
        raise CheckpointError(f"{path}: is {kind}, not a checkpoint file; give a checkpoint file or folder")


def _open_regular(path: Path):
    """A binary file object for a regular file, opened without ever blocking (regular_file.py)."""
    _check_kind(path)
    try:
        return open_regular(path)
    except NotRegularFileError as e:  # swapped for something else since the check
        raise CheckpointError(str(e)) from None


def _read_json(path: Path) -> dict:
    _check_kind(path)
    try:
        text = read_regular_text(path, MAX_JSON_BYTES)
    except NotRegularFileError as e:
        raise CheckpointError(str(e)) from e
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_first_line(e)})") from e
    return json_object(text, path)


def _safetensors_metadata(path: Path) -> dict:
    """The header's string metadata, without reading any tensor."""
    from safetensors import SafetensorError, safe_open

    _check_kind(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(e)})") from e


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: weights file is missing")
    _check_kind(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, header
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(e)})") from e


def _torch_load(path: Path):
    try:
        with _open_regular(path) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
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
    except (KeyError, IndexError, TypeError, AttributeError, MemoryError) as e:
        # What the unpickler raises on bytes that are no pickle at all (a text file named .pt
        # gives a bare `KeyError: 101`): name the file's problem, not the parser's.
        raise CheckpointError(f"{path}: not a PyTorch weights file, or corrupt ({type(e).__name__} in its pickle)") from e


# --- building --------------------------------------------------------------------------------


def _build(config: GPTConfig, sd: dict, path: Path) -> GPT:
    """The GPT for `config` with the tensors of `sd` assigned, names and shapes checked first."""
    return build_model(ARCHITECTURES["gpt2"], config, sd, path)


def _default_dtype(sd: dict, device) -> torch.dtype:
    stored = next(iter(sd.values())).dtype
    if torch.device(device).type == "cpu" and stored == torch.bfloat16 and native.library() is not None:
        # chatterm's bf16 kernels run the stored weights as they are, the rest in fp32: the same
        # arithmetic as widening them to fp32, and 2.9-5x the decode speed (BENCHMARKS.md).
        return torch.bfloat16
    if torch.device(device).type == "cpu" and stored in (torch.float16, torch.bfloat16):
        return torch.float32  # PyTorch's half precision is slow on most CPUs; memory is not the problem here
    return stored if stored.is_floating_point else torch.float32
