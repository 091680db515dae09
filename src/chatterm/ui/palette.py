"""The command palette's chatterm commands (Ctrl+P): every bound action, with its current key,
and one entry per theme. The same list of actions feeds /help, so the two never disagree."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ChatCommands(Provider):
    def _commands(self) -> list[tuple[str, object, str]]:
        """(title, callback, help) for every action and theme."""
        app = self.app
        commands = [
            (description, partial(app.run_action, action), f"key: {key}")
            for description, key, action in app.action_entries()
        ]
        for theme in sorted(app.available_themes):
            commands.append((f"Theme: {theme}", partial(app.commands.run, f"/theme {theme}"), "switch and remember"))
        return commands

    async def discover(self) -> Hits:
        for title, callback, help_text in self._commands():
            if not title.startswith("Theme: "):
                yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
