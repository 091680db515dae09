"""Settings: the SPECS table drives everything, layers and their sources, config validation,
device names, seeds, key maps and themes."""

import argparse
import json
import os
import threading

import pytest
from textual.widgets import TextArea

from chatterm.cli import main
from chatterm.cli.arguments import add_sampling_args
from chatterm.engine.settings import SPECS, TYPED, SamplingSettings
from chatterm.model.device import check_device
from chatterm.session.user.config import AppConfig, load_config
from chatterm.session.user.folders import default_checkpoint
from chatterm.session.user.layered_settings import LayeredSettings, checked_values
from chatterm.ui.app import ChatApp
from chatterm.ui.keys import check_keymap, class_bindings, consumed_keys, is_key_name
from chatterm.ui.prompt_input import PromptInput
from chatterm.ui.themes import load_themes

# -- one table -------------------------------------------------------------------------------------


def test_every_setting_gets_a_flag_with_help_and_its_built_in_default():
    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    flags = {a.dest: a for a in parser._actions if a.dest in SPECS}
    assert set(flags) == set(SPECS)
    for name, action in flags.items():
        assert SPECS[name].help.split(";")[0][:20] in action.help and "(built-in:" in action.help
    assert "(built-in: 0.8)" in flags["temperature"].help and "(built-in: 40)" in flags["top_k"].help


def test_built_in_defaults_are_llama_cpps_and_come_from_the_table():
    s = SamplingSettings()
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty) == (0.8, 40, 0.95, 0.05, 1.0)
    assert {name: spec.default for name, spec in SPECS.items() if spec.kind is not list} == {
        k: v for k, v in s.to_dict().items() if k != "stop"}


@pytest.mark.parametrize("seed", [0, 2**53 + 1, 2**63 - 1])
def test_the_documented_seed_range_is_accepted_exactly(seed):
    s = SamplingSettings()
    s.set("seed", str(seed))
    assert s.seed == seed  # no float rounding: 2**53 + 1 and 2**63 - 1 are not floats
    s.set("seed", seed, TYPED)
    assert s.seed == seed
    with pytest.raises(ValueError, match="out of range"):
        s.set("seed", str(2**63))


def test_typed_values_must_have_the_right_type():
    for name, value in [("temperature", "0.7"), ("top_k", True), ("stop", 3), ("stop", ["a", 1])]:
        with pytest.raises(ValueError, match=name):
            SamplingSettings().set(name, value, TYPED)
    s = SamplingSettings()
    s.set("top_k", 40.0, TYPED)  # a whole number written as a float is still that number
    assert s.top_k == 40 and isinstance(s.top_k, int)


# -- layers ----------------------------------------------------------------------------------------


def test_precedence_and_sources():
    layers = LayeredSettings()
    assert layers.source_of("temperature") == "built-in"
    layers.set_layer("model", {"temperature": 0.8, "top_k": 40})
    layers.set_layer("config", {"temperature": 0.6})
    layers.set_layer("command line", {"top_k": "5"}, how="text")
    layers.set("temperature", "0.3")
    live = layers.live
    assert (live.temperature, live.top_k) == (0.3, 5)
    assert [layers.source_of(n) for n in ("temperature", "top_k", "top_p")] == ["session", "command line", "built-in"]
    layers.set_layer("model", {})  # another model, without a recommendation
    assert layers.live is live and live.top_k == 5  # updated in place: a running reply sees it


def test_save_default_applies_now_even_under_a_flag():
    layers = LayeredSettings()
    layers.set_layer("command line", {"top_k": 5})
    layers.save_default("top_k", "9")
    assert layers.live.top_k == 9 and layers.layers["config"] == {"top_k": 9}
    layers.save_default("top_p", "0.5")
    assert layers.source_of("top_p") == "config" and "top_p" not in layers.layers["session"]


def test_the_shipped_model_recommends_the_settings_it_was_tuned_with():
    meta = json.loads((default_checkpoint() / "chatterm.json").read_text())
    assert meta["sampling"] == {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                                "repetition_penalty": 1.1, "repetition_window": 64}
    assert checked_values(meta["sampling"])[1] == []


# -- the config file -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key", [
    ('sampling = "fast"', "[sampling]"),
    ('device = "tpu"', "device"),
    ('device = "cuda:abc"', "device"),
    ('dtype = "fp8"', "dtype"),
    ("theme = 3", "theme"),
    ("model = [1]", "model"),
    ("system_prompt = false", "system_prompt"),
    ('keys = "f5"', "[keys]"),
    ("[keys]\nretry = 5", "retry"),
    ("[sampling]\ntemperature = \"hot\"", "temperature"),
    ("[sampling]\nseed = 1.5", "seed"),
])
def test_every_config_key_is_checked_with_a_warning_naming_it(tmp_path, text, key):
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    config, problems = load_config(path)
    assert len(problems) == 1 and key in problems[0], problems
    default = AppConfig()
    assert (config.device, config.dtype, config.theme, config.model, config.system_prompt) == (
        default.device, default.dtype, default.theme, default.model, default.system_prompt)
    assert config.sampling == {} and config.keys == {}


def test_a_good_config_loads_without_problems(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('device = "cuda:1"\ndtype = "bf16"\n[sampling]\nseed = 9223372036854775807\nstop = ["x"]\n'
                    '[keys]\nretry = "f5"\n')
    config, problems = load_config(path)
    assert problems == [] and config.device == "cuda:1" and config.sampling == {"seed": 2**63 - 1, "stop": ["x"]}


def test_a_config_file_that_is_a_fifo_is_reported_without_blocking(tmp_path):
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    config, problems = _in_thread(lambda: load_config(path))
    assert len(problems) == 1 and "is a FIFO" in problems[0] and "using defaults" in problems[0]
    assert config.theme == AppConfig().theme


def _in_thread(fn, timeout=15):
    """fn() in a thread; fails (and releases a reader blocked on a FIFO) when it does not return."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, "blocked"
    return outcome[0]


@pytest.mark.parametrize("name", ["tpu", "cuda:abc", "cuda:", "gpu", "cpu:0:1"])
def test_bad_device_names_are_refused_without_torch(name):
    with pytest.raises(ValueError, match="unknown device"):
        check_device(name)


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cuda:-1", "mps:0", "cuda:"])
def test_bad_device_flag_is_one_line_and_exit_2(capsys, device):
    assert main(["generate", "--device", device, "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"unknown device '{device}'" in err


@pytest.mark.parametrize("command", [["bench", "--shape", "small", "--sections", "decode"],
                                     ["train", "DATA", "OUT"]])
@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"),
                                             ("cuda:7", "CUDA is not available")])
def test_bench_and_train_check_the_device_first(tmp_path, capsys, command, device, message):
    """bench built its first model on the device (a torch traceback); train prepared the data
    first, then raised a ValueError traceback."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is about a machine without CUDA")
    text = tmp_path / "corpus.txt"
    text.write_text("hello there\n" * 50)
    argv = [str(text) if a == "DATA" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    assert main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing prepared or written


def test_big_seed_flag_is_exact(capsys, parrot_checkpoint):
    code = main(["generate", str(parrot_checkpoint), "--prompt", "User: hi\nAssistant:", "--seed", str(2**63 - 1),
                 "--max-new-tokens", "3"])
    assert code == 0, capsys.readouterr().err


# -- keys ------------------------------------------------------------------------------------------


def test_the_input_boxs_own_keys_are_read_from_textual():
    consumed = consumed_keys(PromptInput)
    for binding in class_bindings(TextArea):
        for key in binding.key.split(","):
            assert key in consumed
    assert {"ctrl+u", "ctrl+a", "ctrl+e", "ctrl+k", "ctrl+w", "ctrl+z", "enter", "up"} <= set(consumed)


def test_key_names():
    for good in ("f5", "ctrl+t", "alt+enter", "x", "left_square_bracket", "ctrl+shift+left"):
        assert is_key_name(good), good
    for bad in ("ctrl+foo", "hyperdrive", "control+u", "", "ctrl+"):
        assert not is_key_name(bad), bad


def test_keymap_problems_are_reported_and_left_out():
    from chatterm.ui.inspector import TokenInspector

    keymap = {"retry": "f5", "undo": "ctrl+u", "edit": "f2", "clear": "ctrl+foo", "nope": "f9", "help": "x",
              "quit": "ctrl+u", "inspector_prev": "ctrl+a"}
    usable, problems = check_keymap(keymap, list(ChatApp.BINDINGS), class_bindings(TokenInspector), PromptInput)
    assert usable == {"retry": "f5", "quit": "ctrl+u", "inspector_prev": "ctrl+a"}  # quit is a priority key
    text = "\n".join(problems)
    assert "undo: the message box uses ctrl+u itself" in text
    assert "edit: f2 is already bound to toggle_settings" in text
    assert "clear: ctrl+foo is not a key name" in text
    assert "nope: no such action" in text
    assert "help: the message box uses x itself (typing)" in text


def test_two_remapped_actions_on_one_key():
    usable, problems = check_keymap({"retry": "f5", "undo": "f5"}, list(ChatApp.BINDINGS), [], PromptInput)
    assert usable == {"retry": "f5"} and "undo: f5 is already bound to retry" in problems[0]


# -- themes ----------------------------------------------------------------------------------------


def test_broken_themes_are_reported_and_skipped(tmp_path):
    (tmp_path / "ok.toml").write_text('name = "ok"\nprimary = "#336699"\n')
    (tmp_path / "colour.toml").write_text('name = "colour"\nprimary = "not-a-colour"\n')
    (tmp_path / "types.toml").write_text('name = "types"\nprimary = "#fff"\ndark = "yes"\n')
    (tmp_path / "toml.toml").write_text('name = "x\n')
    os.mkfifo(tmp_path / "pipe.toml")  # opening a FIFO would wait for a writer forever
    # Variables are pasted into every stylesheet that names them: one that does not parse there
    # fails the whole stylesheet, and the app with it.
    (tmp_path / "var.toml").write_text('name = "var"\nprimary = "#fff"\n'
                                       '[variables]\n"footer-key-foreground" = "notacolour"\n')
    (tmp_path / "style.toml").write_text('name = "style"\nprimary = "#fff"\n'
                                         '[variables]\n"link-style" = "red"\n')
    (tmp_path / "inject.toml").write_text('name = "inject"\nprimary = "#fff"\n'
                                          '[variables]\n"link-color" = "red; } Screen { color: blue"\n')
    (tmp_path / "good_vars.toml").write_text('name = "good_vars"\nprimary = "#fff"\n[variables]\n'
                                             '"footer-key-foreground" = "$primary 30%"\n"link-style" = "bold"\n')
    themes, problems = _in_thread(lambda: load_themes([tmp_path]))
    assert sorted(t.name for t in themes) == ["good_vars", "ok"]
    assert len(problems) == 7 and all("not a usable theme" in p for p in problems)
    assert "is a FIFO" in next(p for p in problems if "pipe.toml" in p)
    assert "footer-key-foreground = 'notacolour' is not a colour" in next(p for p in problems if "var.toml" in p)
    assert "link-style = 'red' is not a text style" in next(p for p in problems if "style.toml" in p)
    assert "is not a single value" in next(p for p in problems if "inject.toml" in p)


@pytest.mark.slow
async def test_the_app_starts_with_a_broken_theme_chosen_and_conflicting_keys(tmp_path, babbler, monkeypatch):
    """The config names a user theme that cannot be drawn and binds two actions to one key: the
    app starts on the default theme, says so in one line each, and binds only the first."""
    from helpers import wait_until
    from ui_helpers import notes

    config_dir = tmp_path / "cfg"
    monkeypatch.setenv("CHATTERM_CONFIG_DIR", str(config_dir))
    (config_dir / "themes").mkdir(parents=True)
    (config_dir / "themes" / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    (config_dir / "themes" / "badvar.toml").write_text(
        'name = "badvar"\nprimary = "#336699"\n[variables]\n"footer-key-foreground" = "notacolour"\n')
    config = AppConfig(theme="broken", keys={"retry": "f5", "undo": "f5", "clear": "ctrl+nonsense"})
    app = ChatApp(config, str(babbler), [])
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.session.backend is not None, what="the model")
        shown = "\n".join(notes(app))
        assert app.theme == "chatterm-dark" and config.theme == "chatterm-dark"
        assert "broken.toml: not a usable theme" in shown and "unknown or unusable theme 'broken'" in shown
        assert "undo: f5 is already bound to retry" in shown and "clear: ctrl+nonsense is not a key name" in shown
        assert app.checked_keys == {"retry": "f5"}
        # The theme whose variable cannot be drawn was never registered: /theme cannot pick it.
        assert "badvar.toml: not a usable theme" in shown and "badvar" not in app.available_themes
