"""Session vs saved: what a launch's flags set stays in that session. Saving (`/set ... --save`,
`/system ... --save`, `/theme`, the panel's Ctrl+S) writes only the change asked for, to the
config file as it is at that moment."""

import io
import sys

from chatterm import cli
from chatterm.session.user.config import default_config_path, load_config


def chat(monkeypatch, checkpoint, lines, *flags) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    return cli.main(["chat", str(checkpoint), "--plain", "--temperature", "0", *flags])


def test_a_system_prompt_given_for_one_launch_does_not_follow_into_the_next(parrot_checkpoint, monkeypatch, capsys):
    path = default_config_path()
    path.parent.mkdir(parents=True)
    path.write_text('[keys]\nretry = "f5"\n')
    flags = ("--system", "be a pirate", "--theme", "chatterm-light", "--device", "cpu", "--dtype", "fp32")
    assert chat(monkeypatch, parrot_checkpoint, ["/set top_k 5 --save"], *flags) == 0
    config, problems = load_config()
    assert not problems and config.sampling == {"top_k": 5} and config.keys == {"retry": "f5"}
    # The flags' values stay out of the file.
    assert (config.system_prompt, config.theme, config.device, config.dtype) == ("", "chatterm-dark", "auto", "auto")
    capsys.readouterr()

    assert chat(monkeypatch, parrot_checkpoint, ["/settings"]) == 0  # the next launch, no flags
    assert "top_k = 5 (config)" in capsys.readouterr().err
    assert chat(monkeypatch, parrot_checkpoint, ["/system be brief --save"], "--system", "be a pirate") == 0
    assert load_config()[0].system_prompt == "be brief"


def test_saving_keeps_what_another_session_saved_meanwhile(parrot_checkpoint, monkeypatch):
    path = default_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[sampling]\ntop_p = 0.9\n")

    def lines():
        yield "/settings\n"
        path.write_text("[sampling]\ntop_p = 0.5\n")  # another chatterm saves while this one runs
        yield "/set min_p 0.1 --save\n"

    monkeypatch.setattr(sys, "stdin", Lines(lines()))
    assert cli.main(["chat", str(parrot_checkpoint), "--plain"]) == 0
    assert load_config()[0].sampling == {"top_p": 0.5, "min_p": 0.1}


class Lines:
    """A standard input that is not a terminal and yields the lines a generator gives."""

    def __init__(self, lines) -> None:
        self.lines = lines

    def isatty(self) -> bool:
        return False

    def __iter__(self):
        return self.lines


def test_an_unreadable_config_file_is_left_alone_with_a_one_line_warning(parrot_checkpoint, monkeypatch, capsys):
    path = default_config_path()
    path.parent.mkdir(parents=True)
    broken = "temperature = = 0.5\n"
    path.write_text(broken)
    assert chat(monkeypatch, parrot_checkpoint, ["/set top_k 5 --save"]) == 0
    err = capsys.readouterr().err
    assert path.read_text() == broken
    warning = next(line for line in err.splitlines() if "could not save settings" in line)
    assert "cannot read the config file" in warning and "fix or remove it" in warning
    assert "top_k = 5 (config)" in err  # the session still uses the value


async def test_the_panels_system_prompt_is_for_the_session_whatever_it_ends_with(parrot_checkpoint):
    from helpers import wait_until
    from ui_helpers import make_app, ready

    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        field = app.query_one("#set-system")
        field.value = "Answer in French --save"
        field.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.session.conversation.system == "Answer in French --save")
        assert load_config()[0].system_prompt == "" and not default_config_path().exists()
