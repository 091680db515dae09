"""Good answers by default: llama.cpp's sampling defaults, a model's own recommendation above
them (its files, or the known models' table that `chatterm pull` uses), shown from the first frame."""

from __future__ import annotations

import json

from helpers import save_tiny_checkpoint, tiny_model
from tiny_llama import hf_model, write_gguf

from chatterm.engine.settings import SPECS, SamplingSettings
from chatterm.session import open_backend
from chatterm.session.user.config import AppConfig
from chatterm.session.user.layered_settings import MODEL, LayeredSettings, model_recommendation, peek_recommendation
from chatterm.session.user.installed_models import KNOWN_MODELS, models_dir


def test_the_built_in_defaults_are_llama_cpps():
    values = SamplingSettings()
    assert (values.temperature, values.top_k, values.top_p, values.min_p, values.repetition_penalty) == \
        (0.8, 40, 0.95, 0.05, 1.0)
    assert LayeredSettings().source_of("temperature") == "built-in"


def test_a_known_model_gets_its_model_cards_values_before_and_after_loading():
    name = "smollm2-135m-instruct"
    models_dir().mkdir(parents=True)
    write_gguf(models_dir() / f"{name}.gguf", hf_model("llama", seed=1))  # a stand-in file under its name
    expected = dict(KNOWN_MODELS[name].sampling)
    assert expected == {"temperature": 0.2, "top_p": 0.9}
    assert peek_recommendation(name) == expected  # no loading: the first frame can show it
    backend = open_backend(name)
    assert model_recommendation(backend) == (expected, [])
    settings = LayeredSettings()
    settings.set_layer(MODEL, expected)
    assert settings.describe("temperature") == "0.2 (model)" and settings.describe("top_k") == "40 (built-in)"


def test_the_same_file_elsewhere_is_not_taken_for_the_known_model(tmp_path):
    path = write_gguf(tmp_path / "smollm2-135m-instruct.gguf", hf_model("llama", seed=1))
    assert peek_recommendation(str(path)) == {}
    assert model_recommendation(open_backend(str(path))) == ({}, [])


def test_a_checkpoints_own_values_show_from_the_first_frame(tmp_path):
    from chatterm.ui.app import ChatApp

    folder = save_tiny_checkpoint(tmp_path / "m", tiny_model(), sampling={"temperature": 0.3, "top_k": 7})
    assert json.loads((folder / "chatterm.json").read_text())["sampling"] == {"temperature": 0.3, "top_k": 7}
    app = ChatApp(AppConfig(), str(folder), [])  # not yet run: nothing is loaded
    assert app.commands.settings.describe("temperature") == "0.3 (model)"
    assert app.commands.settings.describe("top_p") == f"{SPECS['top_p'].default:g} (built-in)"
    assert app.session.backend is None


def test_temperature_zero_is_still_greedy_whatever_the_filters(parrot):
    from chatterm.engine.generator import Generator

    model, tok = parrot
    generator = Generator(model, tok)
    prompt = tok.encode("User: hi\nAssistant:")
    greedy = generator.complete(prompt, SamplingSettings(temperature=0, top_k=0, top_p=1, min_p=0, max_new_tokens=12))
    default = generator.complete(prompt, SamplingSettings(temperature=0, max_new_tokens=12))
    assert default.text == greedy.text and default.text.startswith(" hello there")
