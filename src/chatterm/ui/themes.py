"""Colour themes: `themes/*.toml` files read into Textual `Theme` objects.

Each file holds the fields of `textual.theme.Theme` (name, dark, primary, secondary, accent,
foreground, background, surface, panel, success, warning, error). The folder ships inside the
package; a user can drop more files in `<config dir>/themes/`.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

from textual.theme import Theme

_FIELDS = {f.name for f in fields(Theme)}


def theme_folders(config_dir: Path | None = None) -> list[Path]:
    folders = [Path(str(files("chatterm") / "themes"))]
    if config_dir is not None:
        folders.append(config_dir / "themes")
    return folders


def load_themes(folders: list[Path]) -> tuple[list[Theme], list[str]]:
    """All themes found, with one problem line per file that could not be used."""
    themes, problems = [], []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                unknown = set(data) - _FIELDS
                if unknown:
                    raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
                themes.append(Theme(**data))
            except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
                problems.append(f"{path}: not a usable theme ({e})")
    return themes, problems
