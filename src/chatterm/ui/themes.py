"""Colour themes: `themes/*.toml` files read into Textual `Theme` objects, checked first.

Each file holds the fields of `textual.theme.Theme` (name, dark, primary, secondary, accent,
foreground, background, surface, panel, success, warning, error, ...). The folder ships inside
the package; a user can drop more files in `<config dir>/themes/`. A file is only registered
after its types are checked, its colour system has been generated once, exactly as Textual
does when a theme is applied, and each of its `[variables]` parses where Textual uses that
variable, so a broken theme is one line at start-up, never an app that cannot draw (or start),
and never a theme name saved to the config. Files are read through
regular_file.py: a FIFO or device named `*.toml` is skipped with a line, never waited on.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

from textual.css.stylesheet import Stylesheet
from textual.theme import Theme

from ..regular_file import read_regular_text

_FIELDS = {f.name: f for f in fields(Theme)}
_NUMBERS = {"luminosity_spread", "text_alpha"}
_FLAGS = {"dark", "ansi"}
MAX_THEME_BYTES = 1024 * 1024  # a theme is a few hundred bytes
_ROLE_NAMES = {"color": "colour", "text-style": "text style"}


def theme_folders(config_dir: Path | None = None) -> list[Path]:
    folders = [Path(str(files("chatterm") / "themes"))]
    if config_dir is not None:
        folders.append(config_dir / "themes")
    return folders


def check_theme(data: dict) -> Theme:
    """A usable Theme from a file's table; ValueError with the first problem otherwise."""
    unknown = set(data) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
    for key in ("name", "primary"):
        if key not in data:
            raise ValueError(f"{key} is missing")
    for key, value in data.items():
        if key in _FLAGS:
            ok = isinstance(value, bool)
        elif key in _NUMBERS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif key == "variables":
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        else:
            ok = isinstance(value, str) and (key != "name" or bool(value.strip()))
        if not ok:
            raise ValueError(f"{key}: {value!r} has the wrong type")
    theme = Theme(**data)
    try:
        colours = theme.to_color_system().generate()  # what applying it does: parses every colour
    except Exception as e:  # Textual raises its own parse errors; any failure means unusable
        from ..model.errors import first_line

        raise ValueError(first_line(e)) from None
    _check_variables(theme.variables, colours)
    return theme


def _check_variables(variables: dict[str, str], colours: dict[str, str]) -> None:
    """Each `[variables]` value parses in the role of the variable it replaces.

    Textual pastes them into every stylesheet that names them, and a value that does not parse
    there (`footer-key-foreground = "notacolour"`) fails the whole stylesheet: the app would not
    start. The role is read off the name, as Textual names them: `*style` variables hold text
    styles, the others colours.
    """
    for name, value in variables.items():
        if name not in colours:
            raise ValueError(f"variables: unknown variable {name!r}")
        if any(c in value for c in ";{}"):
            raise ValueError(f"variables: {name} = {value!r} is not a single value")
        role = "text-style" if name.endswith("style") else "color"
        sheet = Stylesheet(variables={**colours, **variables})
        sheet.add_source(f"Screen {{ {role}: {value}; }}", read_from=("theme", name))
        try:
            sheet.parse()
        except Exception:  # Textual's parse errors are several kinds; any means unusable
            raise ValueError(f"variables: {name} = {value!r} is not a {_ROLE_NAMES[role]}") from None


def load_themes(folders: list[Path]) -> tuple[list[Theme], list[str]]:
    """All usable themes found, with one problem line per file that could not be used."""
    themes, problems = [], []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                themes.append(check_theme(tomllib.loads(read_regular_text(path, MAX_THEME_BYTES))))
            except (OSError, UnicodeDecodeError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
                problems.append(f"{path}: not a usable theme ({e}); skipped")
    return themes, problems
