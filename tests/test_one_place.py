"""One way to do each thing, checked over the source tree: the layers import only downward, one
formatter makes an error one line, pyflakes finds no dead imports or names, and property tests
draw the same examples on every run."""

import ast
import re
from pathlib import Path

import pytest

from chatterm.engine.generator import _describe_error
from chatterm.model.errors import first_line

SRC = Path(__file__).resolve().parent.parent / "src" / "chatterm"
LAYERS = ("model", "engine", "session", "ui")  # lowest first


def imports_of(path: Path) -> list[str]:
    """Absolute names of the modules `path` imports, relative imports resolved."""
    package = list(path.relative_to(SRC.parent).with_suffix("").parts)
    package = package[:-1]  # the package a module (or an __init__) sits in
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downward(layer):
    above = LAYERS[LAYERS.index(layer) + 1 :]
    wrong = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "chatterm" and len(parts) > 1 and parts[1] in above + ("cli", "repl", "api", "web"):
                wrong.append(f"{path.relative_to(SRC)} imports {name}")
            if parts[0] == "textual" and layer != "ui":
                wrong.append(f"{path.relative_to(SRC)} imports {name} (Textual is the UI's)")
            if parts[0] == "torch" and layer == "ui":
                wrong.append(f"{path.relative_to(SRC)} imports {name} (the UI never imports torch)")
    assert not wrong, "\n".join(wrong)


def test_the_import_check_sees_relative_imports():
    names = imports_of(SRC / "ui" / "app.py")
    assert "chatterm.session.commands" in names and "chatterm.model.errors" in names


# -- one formatter for "the first line of an error" -----------------------------------------------


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\nTraceback details")) == "bad value"
    assert first_line(RuntimeError("\n\n  CUDA out of memory.\nmore")) == "CUDA out of memory."
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("   ")) == "OSError"
    assert _describe_error(RuntimeError("\nshape mismatch\nat layer 3")) == "shape mismatch"


def test_no_module_formats_the_first_line_of_an_error_itself():
    """Each copy had its own edge: some did not strip, so a message starting with a newline
    showed as an empty line."""
    own = re.compile(r"str\(\w+\)(\.strip\(\))?\.splitlines\(\)")
    copies = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "errors.py"
              for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if own.search(line)]
    assert not copies, copies
