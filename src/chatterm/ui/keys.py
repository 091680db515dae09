"""Checks the config's `[keys]` table (binding id -> key) before the app applies it.

Reported, one line each, and left out (the default key stays): an unknown binding id, a key
name Textual does not know, a key given to two actions, and a key the message box uses itself
(its bindings are read from the widget's classes, Textual's TextArea included, plus the keys it
handles directly), since such a binding would never fire while one is typing.
"""

from __future__ import annotations

import unicodedata

from textual.binding import Binding
from textual.keys import Keys

MODIFIERS = {"ctrl", "shift", "alt", "meta", "super", "hyper"}
_NAMED_KEYS = {key.value.rsplit("+", 1)[-1] for key in Keys} | {"enter", "tab", "space", "escape", "backspace"}


def is_key_name(key: str) -> bool:
    """True for names such as "f5", "ctrl+u", "alt+enter", "x", "left_square_bracket"."""
    *modifiers, base = key.split("+")
    if not base or any(m not in MODIFIERS for m in modifiers):
        return False
    if len(base) == 1 or base in _NAMED_KEYS:
        return True
    try:
        unicodedata.lookup(base.replace("_", " "))  # Textual names characters by their Unicode name
        return True
    except KeyError:
        return False


def class_bindings(widget_class: type) -> list[Binding]:
    """The bindings a widget class declares, its base classes' included."""
    found = []
    for cls in widget_class.__mro__:
        for binding in cls.__dict__.get("BINDINGS", []):
            found.append(binding if isinstance(binding, Binding) else Binding(*binding))
    return found


def consumed_keys(input_class: type) -> dict[str, str]:
    """key -> what the message box does with it (its bindings and its own key handling)."""
    keys = {}
    for binding in class_bindings(input_class):
        for key in binding.key.split(","):
            keys.setdefault(key.strip(), binding.description or binding.action)
    for key in getattr(input_class, "HANDLED_KEYS", ()):
        keys.setdefault(key, "its own key handling")
    return keys


def _types_text(key: str) -> bool:
    """Keys that type a character into the message box: "x", "shift+x", "space"."""
    *modifiers, base = key.split("+")
    return set(modifiers) <= {"shift"} and (len(base) == 1 or base == "space")


def check_keymap(keymap: dict[str, str], app_bindings: list[Binding], widget_bindings: list[Binding],
                 input_class: type) -> tuple[dict[str, str], list[str]]:
    """(the usable part of `keymap`, one problem line per rejected entry). App bindings act
    while one types, so they must not use a key the message box takes; widget bindings (the
    inspector's, the message box's own) act only where their widget has focus."""
    app_ids = {b.id for b in app_bindings if b.id}
    bindings = app_bindings + widget_bindings
    by_id = {b.id: b for b in bindings if b.id}
    consumed = consumed_keys(input_class)
    usable: dict[str, str] = {}
    problems: list[str] = []
    for action, keys in keymap.items():
        binding = by_id.get(action)
        if binding is None:
            problems.append(f"[keys] {action}: no such action; actions are: {', '.join(sorted(by_id))}")
            continue
        names = [k.strip() for k in keys.split(",") if k.strip()]
        bad = [k for k in names if not is_key_name(k)]
        if bad or not names:
            problems.append(f"[keys] {action}: {', '.join(bad) or repr(keys)} is not a key name (e.g. f5, ctrl+t)")
            continue
        taken = [k for k in names if action in app_ids and not binding.priority and (k in consumed or _types_text(k))]
        if taken:
            use = consumed.get(taken[0], "typing")
            problems.append(f"[keys] {action}: the message box uses {taken[0]} itself ({use}); pick another key")
            continue
        usable[action] = ",".join(names)
    # A key bound to two actions, after remapping: the remapped entry is refused.
    owner: dict[str, str] = {}
    for binding in sorted(bindings, key=lambda b: b.id in usable):  # defaults claim their keys first
        for key in usable.get(binding.id, binding.key).split(","):
            other = owner.setdefault(key.strip(), binding.id or binding.action)
            if other != (binding.id or binding.action) and binding.id in usable:
                problems.append(f"[keys] {binding.id}: {key.strip()} is already bound to {other}; the default key stays")
                usable.pop(binding.id)
                break
    return usable, problems
