"""The command palette's chatterm commands (Ctrl+P): every bound action, with its current key,
every slash command (one that takes an argument is put in the message box to complete, with its
usage; one that needs none runs), and one entry per theme. The same lists feed /help, so the two
never disagree."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ..session.commands import ALIASES, COMMANDS


class ChatCommands(Provider):
    def _commands(self) -> list[tuple[str, object, str]]:
        """(title, callback, help) for every action and theme."""
        app = self.app
        commands = [
            (description, partial(app.run_action, action), f"key: {key}")
            for description, key, action in app.action_entries()
        ]
        for spec in COMMANDS.values():
            aliases = " ".join(f"/{a}" for a, name in ALIASES.items() if name == spec.name)
            title = f"/{spec.name}{' ' + spec.args if spec.args else ''}: {spec.help}"
            if spec.needs_arg or spec.name in ("system", "think", "read", "alt", "edit", "copy", "save"):
                callback = partial(app.edit_text, f"/{spec.name} ")  # finish typing it, then Enter
                what = "completes in the message box"
            else:
                callback = partial(app.commands.run, f"/{spec.name}")
                what = "runs it"
            commands.append((title, callback, f"{what}{' · also ' + aliases if aliases else ''}"))
        for theme in sorted(app.available_themes):
            commands.append((f"Theme: {theme}", partial(app.commands.run, f"/theme {theme}"), "switch and remember"))
        return commands

    async def discover(self) -> Hits:
        for title, callback, help_text in self._commands():
            if not title.startswith(("Theme: ", "/")):  # the first screen: the actions
                yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = max(matcher.match(title), matcher.match(help_text))  # an alias finds its command
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
