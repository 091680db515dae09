"""Where each sampling setting comes from: layers, lowest to highest precedence.

    built-in (llama.cpp's, `SPECS`) -> model (its recommended settings) -> config (the user's saved
    defaults) -> command line (flags) -> session (`/set`, the settings panel)

`LayeredSettings.live` is the one `SamplingSettings` object the generator reads; it is updated
in place whenever a layer changes, so a change applies to the next token even mid-reply.
`source_of(name)` says which layer a value comes from, for `/settings` and the panel.
A model's recommendation is read from its metadata (`meta["sampling"]`: chatterm's format, a
Hugging Face folder's generation_config.json, a GGUF's `general.sampling.*`), else from the
table of known models (session/user/installed_models.py: their model cards' values). `peek_recommendation`
finds it before the model loads, from files that need no torch, so the first frame shows it.
"""

from __future__ import annotations

from ...engine.settings import SPECS, TEXT, TYPED, SamplingSettings, format_value, parse_value, spec_for

BUILT_IN, MODEL, CONFIG, COMMAND_LINE, SESSION = "built-in", "model", "config", "command line", "session"
SOURCES = (BUILT_IN, MODEL, CONFIG, COMMAND_LINE, SESSION)  # lowest precedence first


def checked_values(values, how: str = TYPED, where: str = "") -> tuple[dict, list[str]]:
    """The valid entries of a {name: value} table, and one problem line per invalid one."""
    if not isinstance(values, dict):
        return {}, [f"{where}expected a table of settings, got {values!r}; ignored"]
    good, problems = {}, []
    for name, value in values.items():
        try:
            spec = spec_for(name)
            good[spec.name] = parse_value(spec, value, how)
        except ValueError as e:
            problems.append(f"{where}{e}; ignored")
    return good, problems


class LayeredSettings:
    def __init__(self, live: SamplingSettings | None = None) -> None:
        self.live = live if live is not None else SamplingSettings()
        self.layers: dict[str, dict] = {source: {} for source in SOURCES[1:]}
        self._recompute()

    def set_layer(self, source: str, values: dict, how: str = TYPED) -> None:
        """Replace one layer; every value is checked first (ValueError, nothing changed)."""
        checked = {}
        for name, value in values.items():
            spec = spec_for(name)
            checked[spec.name] = parse_value(spec, value, how)
        self.layers[source] = checked
        self._recompute()

    def set(self, name: str, value, source: str = SESSION, how: str = TEXT) -> str:
        """Set one value in a layer (the session's by default); returns the setting's name."""
        spec = spec_for(name)
        self.layers[source][spec.name] = parse_value(spec, value, how)
        self._recompute()
        return spec.name

    def save_default(self, name: str, value, how: str = TEXT) -> str:
        """`/set NAME VALUE --save`: the value becomes the config's default and applies now."""
        name = self.set(name, value, CONFIG, how)
        self._promote({name: self.layers[CONFIG][name]})
        return name

    def session_to_config(self) -> dict:
        """The panel's "save as defaults": session values move into the config layer; returns them."""
        moved = dict(self.layers[SESSION])
        self.layers[CONFIG].update(moved)
        self._promote(moved)
        return moved

    def _promote(self, saved: dict) -> None:
        """Saved values apply now: the session's copy goes, unless a flag would then win."""
        for name, value in saved.items():
            if name in self.layers[COMMAND_LINE]:
                self.layers[SESSION][name] = value
            else:
                self.layers[SESSION].pop(name, None)
        self._recompute()

    def source_of(self, name: str) -> str:
        for source in reversed(SOURCES[1:]):
            if name in self.layers[source]:
                return source
        return BUILT_IN

    def describe(self, name: str) -> str:
        """"0.7 (config)": the value in force and where it comes from."""
        shown = format_value(SPECS[name], getattr(self.live, name)) or "(none)"
        return f"{shown} ({self.source_of(name)})"

    def _recompute(self) -> None:
        values = SamplingSettings()
        for source in SOURCES[1:]:
            for name, value in self.layers[source].items():
                setattr(values, name, list(value) if isinstance(value, list) else value)
        self.live.assign(values)


def model_recommendation(backend) -> tuple[dict, list[str]]:
    """A backend's recommended sampling settings (checked) and problems with them, one line each."""
    raw = backend.meta.get("sampling")
    if raw is None:
        from .installed_models import known_sampling

        return known_sampling(backend.info.source), []
    return checked_values(raw, TYPED, f"{backend.info.name}'s recommended sampling: ")


def peek_recommendation(spec: str | None) -> dict:
    """The recommendation of the model `spec` names, read before loading it (no torch): the known
    models' table, or chatterm's own metadata file. {} when it takes loading to know."""
    import json

    from .installed_models import known_sampling, resolve_model

    try:
        path = resolve_model(spec)
        if path is None:
            return {}
        known = known_sampling(str(path))
        meta_file = path / "chatterm.json"
        if known or not meta_file.is_file():
            return known
        raw = json.loads(meta_file.read_text(encoding="utf-8")).get("sampling")
    except (OSError, ValueError, AttributeError):
        return {}
    return checked_values(raw, TYPED)[0] if raw is not None else {}
