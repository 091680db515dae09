"""Slash commands in the TUI. The table and parsing are shared with the plain REPL
(`session/commands.py`); this mixin runs each command against the app."""

from __future__ import annotations

from pathlib import Path

from ..session import CommandError, parse_command, read_conversation, save_config, write_conversation
from ..session.commands import help_lines
from ..session.persistence import path_and_force, write_user_file


class SlashCommands:
    """Mixed into ChatApp: `await self.run_slash("/set temperature 0.5")`."""

    async def run_slash(self, line: str) -> None:
        try:
            command = parse_command(line)
            await getattr(self, f"slash_{command.name}")(command.arg)
        except (CommandError, ValueError, OSError) as e:
            await self.note(str(e).splitlines()[0] if str(e) else type(e).__name__, "error")

    async def slash_help(self, arg: str) -> None:
        keys = [f"  {key:<8} {title}" for title, key, _ in self.action_entries()]
        extra = ["  Enter    send", "  ^j       new line (also Alt+Enter)", "  ↑/↓      earlier messages",
                 "  ←/→ [ ]  step through tokens (inspector focused)", "  ^p       command palette"]
        await self.note("\n".join(help_lines() + ["", "Keys:"] + keys + extra))

    async def slash_clear(self, arg: str) -> None:
        await self.action_clear()

    async def slash_retry(self, arg: str) -> None:
        await self.action_retry()

    async def slash_undo(self, arg: str) -> None:
        await self.action_undo()

    async def slash_edit(self, arg: str) -> None:
        await self.action_edit()

    async def slash_system(self, arg: str) -> None:
        await self.set_system(arg)

    async def slash_set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if not value.strip():
            raise CommandError(f"/set {name} needs a value: /set NAME VALUE")
        key = name.strip().lower().replace("-", "_")
        self.session.settings.set(key, value.strip())
        self.settings_panel.refresh_values()
        self.persist_config()
        await self.note(f"{key} = {self.session.settings.describe(key)}")

    async def slash_settings(self, arg: str) -> None:
        s = self.session.settings
        await self.note("  ".join(f"{name}={s.describe(name)}" for name in s.to_dict()))

    async def slash_save(self, arg: str) -> None:
        target, force = path_and_force(arg)
        if target:
            path = write_conversation(target, self.session.conversation, force=force)
        else:
            path = self.session.store.save(self.session.conversation)
        await self.note(f"saved to {path}")

    async def slash_load(self, arg: str) -> None:
        if self.generating:
            raise CommandError("a reply is streaming; press Esc first")
        self.session.load_conversation(read_conversation(Path(arg)))
        await self.show_conversation()
        await self.note(f"loaded {len(self.session.conversation.turns)} turns from {arg}")

    async def slash_export(self, arg: str) -> None:
        target, force = path_and_force(arg)
        path = write_user_file(target, self.session.conversation.to_markdown(), force=force)
        await self.note(f"exported to {path}")

    async def slash_model(self, arg: str) -> None:
        if self.generating:
            raise CommandError("a reply is streaming; press Esc first")
        await self.note(f"loading {arg}…")
        self.status.busy = "loading model"
        self.load_model(arg)

    async def slash_theme(self, arg: str) -> None:
        if arg not in self.available_themes:
            raise CommandError(f"unknown theme {arg!r}; themes: {', '.join(sorted(self.available_themes))}")
        self.theme = arg
        self.config.theme = arg
        self.persist_config()
        await self.note(f"theme: {arg}")

    async def slash_quit(self, arg: str) -> None:
        await self.action_quit()

    def persist_config(self) -> None:
        try:
            save_config(self.config)
        except OSError as e:
            self.notify(f"could not save settings: {e}", severity="error", markup=False)
