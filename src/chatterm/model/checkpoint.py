"""Load and save checkpoints; the format is detected from what is on disk, and the model is
built by model/loader.py from the tensors the format yields.

Formats read:
0. GGUF files (formats/gguf.py) and Hugging Face folders of the families other than GPT-2
   (formats/hf_folder.py, formats/safetensors_files.py), read a tensor at a time;
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
from . import loader
from .errors import CheckpointError, json_object, reading
from .errors import first_line as _first_line
from .families import families, family_for, family_for_gguf
from .families.gpt2 import GPTConfig, normalize_config_keys
from .formats import DictSource
from .formats import state_dicts
from .formats.gguf import readable_types
from .memory import check_fits

META_FILE = "chatterm.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 64 * 1024 * 1024  # a config or tokenizer file; bigger is not one


@dataclass
class Checkpoint:
    """A loaded model with everything that came with it."""

    model: torch.nn.Module  # a family's module (families/)
    config: object  # its config
    path: Path
    format: str  # "gguf", "chatterm", "nanogpt", "state_dict", "huggingface"
    meta: dict = field(default_factory=dict)  # tokenizer spec, chat template, training info

    @property
    def name(self) -> str:
        return self.meta.get("name") or (self.path.stem if self.path.is_file() else self.path.name)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    inference: bool = False,
    n_head: int | None = None,
    context: int | None = None,
    progress=None,
) -> Checkpoint:
    """Load any supported checkpoint (see model/loader.py for what `precision` and `inference`
    do: for inference on the CPU each tensor goes straight into the layer that computes with
    it, as stored unless `precision` says otherwise; else plain torch layers, trainable, in the
    stored float dtype or `precision`). `context` caps the context window; `progress(what,
    fraction)` is called while weights are read. The memory check runs before any weight is read
    where the format allows (GGUF files, safetensors), with the bytes the model will really take."""
    path = Path(path).expanduser()
    device = torch.device(device)
    _check_kind(path, folder_ok=True)
    with reading(path):
        fmt, family, config, source, map_tensors, meta, strict = _open(path, n_head, context)
        try:
            loader.check_config_matches(config, source, path)
            build = dict(precision=precision, device=device, inference=inference)
            model = loader.empty_model(family, config)
            tensor_map = map_tensors(model)
            weights = loader.stored_bytes(model, source, tensor_map, precision, cpu=inference and device.type == "cpu")
            already = sum(t.numel() * t.element_size() for t in source.sd.values()) if isinstance(source, DictSource) else 0
            check_fits(config, weights, _cache_element_size(precision, device, inference), device, path,
                       already_loaded=already, context=context)
            model = loader.assemble(family, model, source, tensor_map, path, strict=strict, progress=progress, **build)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    loader.cap_context(model, context, family)
    return Checkpoint(model=model, config=model.config, path=path, format=fmt, meta=meta)


def checkpoint_family(path: str | os.PathLike, n_head: int | None = None) -> str:
    """The family of the model at `path` ("gpt2", "llama"), from its headers and config: a caller
    that can only use one family refuses the others before any weight is read."""
    path = Path(path).expanduser()
    _check_kind(path, folder_ok=True)
    with reading(path):
        _, family, _, source, _, _, _ = _open(path, n_head, None)
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return family.name


def _cache_element_size(precision, device: torch.device, inference: bool) -> int:
    """Bytes per KV-cache value, by the loader's one rule (loader.cache_dtype)."""
    dtype = loader.cache_dtype(precision, device, inference)
    if dtype is not None:
        return dtype.itemsize
    return 2 if precision in ("bf16", "fp16") or device.type != "cpu" else 4


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: dict | None = None) -> Path:
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


def _open(path: Path, n_head: int | None, context: int | None):
    """(format, family, config, tensor source, its tensor map (a callable of the empty model:
    made once the config is known to match the file), meta, strict: every stored tensor must be one of ours, for the
    formats written in our names) for whatever is at `path`; nothing but headers
    and configs is read yet, except for the small pickled formats."""
    from .formats.gguf import GGUFFile, is_gguf
    from .formats.hf_folder import folder_meta, hf_family_folder_shards, is_hf_family_folder
    from .formats.safetensors_files import SafetensorsFiles

    if path.suffix.lower() == ".gguf" and path.is_file() and not is_gguf(path):
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with GGUF's magic bytes); damaged or incomplete?")
    if is_gguf(path):
        gguf = GGUFFile(path)
        try:
            family = family_for_gguf(gguf.field("general.architecture"), path)
            unreadable = sorted({t.type_name for t in gguf.tensors.values()} - set(readable_types()))
            if unreadable:
                raise CheckpointError(f"{path}: quantization type {', '.join(unreadable)} is not supported "
                                      f"(supported: {', '.join(readable_types())})")
            arch = gguf.field("general.architecture")
            try:
                config = family.config_from_gguf(gguf, arch, context)
            except (KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: cannot read this GGUF file ({_first_line(e)})") from e
            return "gguf", family, config, gguf, lambda model: family.gguf_tensors(config, arch), gguf.checkpoint_meta(), False
        except BaseException:
            gguf.close()
            raise
    if is_hf_family_folder(path):
        raw = _read_json(path / "config.json")
        family = family_for(raw.get("model_type") or next(iter(raw.get("architectures") or []), None), path / "config.json")
        if raw.get("quantization_config"):  # FP8, GPTQ, AWQ, bitsandbytes: weights plus scales we would ignore
            method = raw["quantization_config"].get("quant_method", "?") if isinstance(raw["quantization_config"], dict) else "?"
            raise CheckpointError(f"{path}: a quantized Hugging Face folder ({str(method)[:20]}) is not read; "
                                  "open a GGUF of the model, or the unquantized folder")
        try:
            config = family.config_from_hf(raw, context)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise CheckpointError(f"{path / 'config.json'}: bad model config ({_first_line(e)})") from e
        source = SafetensorsFiles(path, hf_family_folder_shards(path))
        return "huggingface", family, config, source, lambda model: family.hf_tensors(config), folder_meta(path), False
    if _is_our_safetensors(path):
        meta, weights = _our_meta(path)
        family = families().get((meta.get("model") or {}).get("architecture", "gpt2") if isinstance(meta.get("model"), dict) else "gpt2")
        if family is None:
            raise CheckpointError(f"{path}: unknown model architecture in its metadata")
        config = _config_from(meta.get("model"), path, family)
        source = SafetensorsFiles(weights.parent, [weights.name])
        return "chatterm", family, config, source, own_tensors, meta, True
    fmt, config, sd, meta = _read(path, n_head)
    family = families()["gpt2"]
    return fmt, family, config, DictSource(sd), own_tensors, meta, True


def own_tensors(model) -> dict:
    """Our own names, each stored under itself (our format, and state dicts already translated)."""
    from .families import Sources

    names = list(model.state_dict())
    tied = model.config.tie_embeddings
    return {k: Sources.of(k, optional=k.endswith(".bias") or (tied and k == "lm_head.weight")) for k in names}


def _is_our_safetensors(path: Path) -> bool:
    if path.is_dir():
        return (path / META_FILE).exists()
    return path.suffix == ".safetensors" and "chatterm" in _safetensors_metadata(path)


def _our_meta(path: Path) -> tuple[dict, Path]:
    """(metadata, weights file) of our format: a folder's chatterm.json, or a single file's header."""
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            raise CheckpointError(f"{weights}: weights file is missing")
        _check_kind(weights)
        return _read_json(path / META_FILE), weights
    return json_object(_safetensors_metadata(path)["chatterm"], f"{path} (its 'chatterm' metadata)"), path


def _read(path: Path, n_head: int | None) -> tuple[str, GPTConfig, dict, dict]:
    """(format, config, state dict, meta) of the small GPT-2 formats read whole: nanoGPT,
    plain state dicts, Hugging Face GPT-2 folders."""
    if path.is_dir():
        if (path / "config.json").exists() and _hf_weights(path):
            return _read_hf(path)
        if (path / "ckpt.pt").exists():
            return _read(path / "ckpt.pt", n_head)
        raise CheckpointError(
            f"{path}: no model found in this folder (expected {META_FILE}, a Hugging Face config.json "
            "with model.safetensors or pytorch_model.bin, or a nanoGPT ckpt.pt)"
        )
    if path.suffix == ".safetensors":
        return _plain(path, _read_safetensors(path)[0], n_head)
    obj = _torch_load(path)
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:
        sd = _tensors(obj["model"], path, "its 'model' entry")
        config = _config_from(obj["model_args"], path)
        return "nanogpt", config, state_dicts.strip_prefixes(sd), {"training": {"iter_num": obj.get("iter_num")}}
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
    sd = state_dicts.strip_prefixes(sd)
    sidecar = _sidecar_config(path)
    if state_dicts.is_textbook(sd):
        sd = state_dicts.from_textbook(sd)
    elif "wte.weight" in sd or "h.0.attn.c_attn.weight" in sd:
        sd = state_dicts.from_hf(sd)  # a bare GPT2Model state dict
    if "transformer.wte.weight" not in sd:
        raise CheckpointError(f"{path}: not a GPT state dict (no token embedding 'transformer.wte.weight')")
    heads = n_head or sidecar.get("n_head")
    if heads is None:
        raise CheckpointError(
            f"{path}: the number of attention heads is unknown; put a JSON config with n_head beside "
            f"it ({path.with_suffix('.json').name}) or pass --n-head"
        )
    eps = sidecar.get("layer_norm_eps")
    return "state_dict", state_dicts.infer_config(sd, heads, layer_norm_eps=eps), sd, {}


def _read_hf(path: Path) -> tuple[str, GPTConfig, dict, dict]:
    raw = _read_json(path / "config.json")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type {str(raw.get('model_type'))[:40]!r} is not GPT-2")
    cfg = normalize_config_keys(raw)
    cfg.setdefault("bias", True)
    config = _config_from(cfg, path / "config.json")
    weights = _hf_weights(path)
    sd = _read_safetensors(weights)[0] if weights.suffix == ".safetensors" else _torch_load(weights)
    sd = state_dicts.from_hf(_tensors(sd, weights, "it"))
    return "huggingface", config, sd, {"name": path.name}


def _hf_weights(path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    return None


def _sidecar_config(path: Path) -> dict:
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.exists():
            return normalize_config_keys(_read_json(candidate))
    return {}


def _config_from(raw, where: Path, family=None):
    """The config of `family` (GPT-2 by default) from a dict in our, nanoGPT's or HF's spelling."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: the model config is missing")
    try:
        if family is not None and family.name != "gpt2":
            return family.config_class.from_dict(raw)
        return GPTConfig.from_dict(normalize_config_keys(raw))
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
