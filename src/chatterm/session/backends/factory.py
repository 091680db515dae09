"""`open_backend(spec)`: the one way to get a `ChatBackend`, for every front end.

The TUI, the plain REPL, `chatterm generate` and the Python API all open their model here:
- `http://...` or `https://...`: a remote server (session/backends/remote/backend.py);
- anything else: a checkpoint file or folder, run in this process (session/backends/local.py).
  Names of installed models (`chatterm pull NAME`) resolve to their files in `_local_path`.

Options are passed on to the backend's opener; those set to None are dropped first, so front
ends can pass their flags through unchanged (`device=None` means "the backend's default").
Nothing heavy is imported until a backend is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

from .contract import ChatBackend

REMOTE_SCHEMES = ("http://", "https://")
# Options only a server takes. A front end passes the same options for every spec it opens (a
# `/model PATH` after starting on a server), so a local checkpoint drops these; a remote
# backend likewise ignores a local one's (device, dtype, ...).
REMOTE_ONLY_OPTIONS = frozenset({"model", "api_key", "api_key_env", "mode", "timeout"})


def open_backend(spec: str | os.PathLike, **options) -> ChatBackend:
    """Open the backend that `spec` names (see the module docstring). Errors a user can cause
    (a missing file, a broken checkpoint, a bad option value) raise with one clear line."""
    options = {name: value for name, value in options.items() if value is not None}
    text = str(spec)
    if text.startswith(REMOTE_SCHEMES):
        try:
            from .remote.backend import RemoteBackend
        except ImportError as e:
            if e.name not in (None, f"{__package__}.remote.backend"):  # the module is there, a dependency is not
                raise ValueError(f"{text}: remote backends need the {e.name!r} package (pip install {e.name})") from None
            raise ValueError(f"{text}: remote backends are not available in this version of chatterm") from None
        return RemoteBackend.open(text, **options)
    from .local import LocalBackend

    from ...model.errors import CheckpointError

    local = {name: value for name, value in options.items() if name not in REMOTE_ONLY_OPTIONS}
    path = _local_path(text)
    try:
        return LocalBackend.load(path, **local)
    except CheckpointError as e:
        if "is not supported (supported:" not in str(e) or not path.is_file():
            raise
        # A family chatterm does not run yet: say how to chat with the file anyway.
        raise CheckpointError(f"{e}; to chat with it anyway, serve it with llama.cpp (llama-server -m {path} "
                              "--port 8080) and run: chatterm http://localhost:8080/v1") from None


def _local_path(spec: str) -> Path:
    """The checkpoint that `spec` names: a path, or the name of an installed model (session/user/installed_models.py)."""
    from ..user.installed_models import resolve_model

    return resolve_model(spec)
