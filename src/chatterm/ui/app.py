"""ChatApp: the Textual front end.

The app is interactive at once; the model loads in a thread worker. Each reply runs in one
thread worker that consumes the session's event stream and posts batched messages (at most one
every ~40 ms) back to the app, so the UI keeps pace with the engine. Everything the user can do
is a bound action with an id (remappable from the config file's [keys]), in the command
palette (`palette.ChatCommands`) and in /help. This module imports neither torch nor the model:
the first frame never waits for them.
"""

from __future__ import annotations

import time
from typing import Iterable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from ..engine.events import ContextTrimmed, Finished, TextDelta, TokenStep
from ..session import ChatSession, Conversation, ConversationStore, clean_message, is_command
from ..session.config import AppConfig, config_dir, data_dir
from .chat_view import AssistantMessage, ChatView, Note, UserMessage
from .inspector import TokenInspector
from .messages import ModelFailed, ModelLoaded, ReplyFinished, ReplyProgress
from .palette import ChatCommands
from .prompt_input import PromptInput
from .settings_panel import SettingsPanel
from .slash import SlashCommands
from .status_bar import StatusBar
from .themes import load_themes, theme_folders

INSPECT_TOP = 8  # candidates per token shown by the inspector
FLUSH_SECONDS = 0.04  # the most often a streaming reply updates the screen (25 times a second)
MAX_FLUSH_SECONDS = 0.25  # and the least often
# The engine shares this process (its GIL and its cores) with the UI, so every redraw is time the
# engine does not get. While a reply streams, updates are spaced so that the UI thread uses at
# most this share of the time (its CPU time over wall time); see BENCHMARKS.md.
UI_TIME_SHARE = 0.1


class ChatApp(SlashCommands, App):
    CSS_PATH = "app.tcss"
    TITLE = "chatterm"
    COMMANDS = App.COMMANDS | {ChatCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (90, "-wide")]  # below 90 columns the side panel folds away
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="stop"),
        Binding("ctrl+r", "retry", "Retry", id="retry"),
        # Not ctrl+z / ctrl+e: the message editor uses those for its own undo and line end.
        Binding("ctrl+b", "undo", "Undo", id="undo"),
        Binding("ctrl+o", "edit", "Edit last", id="edit"),
        Binding("ctrl+n", "clear", "New chat", id="clear"),
        Binding("f2", "toggle_settings", "Settings", id="toggle_settings"),
        Binding("f3", "toggle_inspector", "Inspector", id="toggle_inspector"),
        Binding("f1", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]
    ACTION_HELP = {  # longer titles for the command palette and /help
        "stop": "Stop the reply (the partial reply stays)",
        "retry": "Regenerate the last reply",
        "undo": "Undo the last exchange",
        "edit": "Edit and resend the last message",
        "clear": "Clear: start a new conversation",
        "toggle_settings": "Show or hide the settings panel",
        "toggle_inspector": "Show or hide the token inspector",
        "help": "Help: commands and keys",
        "quit": "Quit chatterm",
    }

    def __init__(self, config: AppConfig, checkpoint: str | None, problems: list[str] | None = None) -> None:
        super().__init__()
        self.config = config
        self.checkpoint = checkpoint
        self.problems = list(problems or [])
        self.session = ChatSession(
            None, config.sampling, Conversation(system=config.system_prompt), ConversationStore(data_dir() / "conversations"),
            warn=lambda text: self.notify(text, severity="warning", markup=False),  # any thread; autosave failures
        )
        self.generating = False
        self.show_settings = True
        self.show_inspector = True
        self._reply_widget: AssistantMessage | None = None
        self._flush_seconds = FLUSH_SECONDS  # adapted to the UI's share of the time; read by the reply worker
        self._ui_clock = (0.0, 0.0)  # (wall, UI thread CPU) at the last streaming update

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ChatView(id="chat")
                yield PromptInput(id="input")
            with Vertical(id="side"):
                yield SettingsPanel(self.session.settings, self.config.system_prompt, id="settings")
                yield TokenInspector(id="inspector")
        yield StatusBar(id="status")
        yield Footer()

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def settings_panel(self) -> SettingsPanel:
        return self.query_one(SettingsPanel)

    @property
    def inspector(self) -> TokenInspector:
        return self.query_one(TokenInspector)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    async def on_mount(self) -> None:
        themes, problems = load_themes(theme_folders(config_dir()))
        for theme in themes:
            self.register_theme(theme)
        self.problems += problems
        if self.config.theme in self.available_themes:
            self.theme = self.config.theme
        else:
            self.problems.append(f"unknown theme {self.config.theme!r}; using chatterm-dark")
            self.theme = "chatterm-dark"
        if self.config.keys:
            self.set_keymap(self.config.keys)
        prompt = self.query_one(PromptInput)
        prompt.border_title = "Message · Enter sends · Ctrl+J newline · /help"
        prompt.focus()
        for problem in self.problems:
            await self.note(problem, "error")
        self.status.busy = "loading model"
        self.load_model(self.checkpoint)

    def action_entries(self) -> list[tuple[str, str, str]]:
        """(title, key as shown, action) for every bound action, keys as remapped by the config."""
        entries = []
        for binding in self.BINDINGS:
            key = self.config.keys.get(binding.id, binding.key) if binding.id else binding.key
            shown = self.get_key_display(Binding(key.split(",")[0], binding.action))
            entries.append((self.ACTION_HELP.get(binding.action, binding.description), shown, binding.action))
        return entries

    # -- model loading -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, path: str | None) -> None:
        started = time.perf_counter()
        try:
            from ..session.backends import open_backend

            if path is None:
                from ..session.config import default_checkpoint

                if not default_checkpoint().exists():
                    self.post_message(ModelFailed(
                        f"the default model is not installed ({default_checkpoint()}); "
                        "load a checkpoint with /model PATH"))
                    return
                path = str(default_checkpoint())
            backend = open_backend(path, device=self.config.device, dtype=self.config.dtype)
        except Exception as e:  # a bad file must never take the app down: one line, old model kept
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.post_message(ModelFailed(message))
            return
        self.post_message(ModelLoaded(backend, time.perf_counter() - started))

    async def on_model_loaded(self, message: ModelLoaded) -> None:
        self.status.busy = ""
        self.session.backend = message.backend
        info = message.backend.info
        self.status.model = info.name
        self.status.device = f"{info.device} {info.dtype}"
        self.status.note = ""
        self.update_context()
        await self.note(f"loaded {info.name} ({info.parameters / 1e6:.1f}M parameters, window {info.context_window}) "
                        f"in {message.seconds:.1f} s")

    async def on_model_failed(self, message: ModelFailed) -> None:
        self.status.busy = ""
        await self.note(f"could not load the model: {message.error}", "error")
        if self.session.backend is None:
            self.status.model = "no model"
            self.status.note = "/model PATH loads one"

    # -- sending and streaming -----------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def on_prompt(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if is_command(text.strip()):
            await self.run_slash(text.strip())
            return
        if text.startswith("//"):
            text = text[1:]
        await self.send(text)

    async def send(self, text: str) -> None:
        if not await self._can_reply():
            return
        try:
            events = self.session.send(text, inspect=INSPECT_TOP)
        except ValueError as e:
            await self.note(str(e), "error")
            return
        await self.chat.add(UserMessage(self.session.conversation.turns[-1].text))
        self.chat.follow()  # sending brings the newest text back into view
        await self._start_reply(events)

    async def _can_reply(self) -> bool:
        if self.generating:
            await self.note("a reply is still streaming; Esc stops it", "error")
            return False
        if self.session.backend is None:
            await self.note("no model loaded yet; wait for it, or /model PATH", "error")
            return False
        return True

    async def _start_reply(self, events: Iterable) -> None:
        self.generating = True
        self.status.busy = "generating (Esc stops)"
        if not self.status.note.startswith("dropped"):
            self.status.note = ""
        self.inspector.reset()
        self._reply_widget = AssistantMessage()
        await self.chat.add(self._reply_widget)
        self.run_reply(events)

    @work(thread=True, exclusive=True, group="generate")
    def run_reply(self, events: Iterable) -> None:
        text: list[str] = []
        steps: list[TokenStep] = []
        trimmed = None
        done, error = None, ""
        last = time.monotonic()
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, TokenStep):
                    steps.append(event)
                elif isinstance(event, ContextTrimmed):
                    trimmed = event
                elif isinstance(event, Finished):
                    done = event
                now = time.monotonic()
                if now - last >= self._flush_seconds and (text or steps):
                    self.post_message(ReplyProgress("".join(text), steps, trimmed))
                    text, steps, trimmed, last = [], [], None, now
        except Exception as e:  # keep the app alive whatever happens in the engine
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
        if text or steps or trimmed:
            self.post_message(ReplyProgress("".join(text), steps, trimmed))
        self.post_message(ReplyFinished(done, error))

    async def on_reply_progress(self, message: ReplyProgress) -> None:
        self._pace_updates()
        if message.text and self._reply_widget is not None:
            await self._reply_widget.append_text(message.text)
        if message.steps:
            self.inspector.add_steps(message.steps)
        if message.trimmed and message.trimmed.dropped_turns:
            self.status.note = f"dropped {message.trimmed.dropped_turns} old turns to fit the window"

    def _pace_updates(self) -> None:
        """Stretch or shrink the update interval by the UI thread's share of the time since the
        last update, so that it converges on UI_TIME_SHARE."""
        wall, cpu = time.perf_counter(), time.thread_time()
        last_wall, last_cpu = self._ui_clock
        self._ui_clock = (wall, cpu)
        if last_wall and wall - last_wall < 1.0:  # within one reply's stream
            share = (cpu - last_cpu) / max(wall - last_wall, 1e-3)
            wanted = self._flush_seconds * share / UI_TIME_SHARE
            self._flush_seconds = min(MAX_FLUSH_SECONDS, max(FLUSH_SECONDS, wanted))

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        self.generating = False
        self.status.busy = ""
        done = message.done
        widget, self._reply_widget = self._reply_widget, None
        if done is None:
            if widget is not None:
                await widget.finish("", f"error: {message.error}")
            return
        turns = self.session.conversation.turns
        # The backend wrote the turn with its note ("stopped", "cut at max_new_tokens", an error).
        note = turns[-1].note if turns and turns[-1].role == "assistant" else (done.error or "")
        if widget is not None:
            await widget.finish(done.text.strip(), note)
        self.inspector.finish(len(done.token_ids), done.stop_reason)
        self.status.speed = f"TTFT {done.ttft_s:.2f} s · {done.tokens_per_s:.1f} tok/s"
        self.update_context()

    def update_context(self) -> None:
        backend = self.session.backend
        if backend is not None:
            self.status.context = (self.session.context_tokens(), backend.info.context_window)

    # -- actions -------------------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.generating:
            self.session.stop()

    async def action_quit(self) -> None:
        self.session.stop()  # a streaming reply ends within a token, so the exit never waits on it
        self.exit()

    async def action_retry(self) -> None:
        if not await self._can_reply():
            return
        turns = self.session.conversation.turns
        if not turns:
            await self.note("nothing to retry yet", "error")
            return
        if turns[-1].role == "assistant":
            last = self.chat.last_assistant()
            if last is not None:
                await last.remove()
        await self._start_reply(self.session.regenerate(inspect=INSPECT_TOP))

    async def action_undo(self) -> None:
        if self.generating:
            await self.note("a reply is still streaming; Esc stops it", "error")
            return
        if self.session.undo():
            await self.show_conversation()
        else:
            await self.note("nothing to undo")

    async def action_edit(self) -> None:
        if self.generating:
            await self.note("a reply is still streaming; Esc stops it", "error")
            return
        text = self.session.edit_last()
        if not text:
            await self.note("nothing to edit")
            return
        await self.show_conversation()
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    async def action_clear(self) -> None:
        if self.generating:
            self.session.stop()
            await self.workers.wait_for_complete()
        self.session.clear()
        self.inspector.reset()
        await self.show_conversation()
        await self.note("new conversation (the last one is saved)")

    def action_toggle_settings(self) -> None:
        self._toggle_panel("show_settings")
        if self.show_settings and self.settings_panel.display:
            self.query_one("#set-temperature").focus()

    def action_toggle_inspector(self) -> None:
        self._toggle_panel("show_inspector")
        if self.show_inspector:
            self.inspector.focus()

    async def action_help(self) -> None:
        await self.slash_help("")

    def _toggle_panel(self, flag: str) -> None:
        """Wide screens: show/hide the panel beside the chat. Narrow ones (where the side column
        is hidden): the first press opens the column over the whole width, the next closes it."""
        narrow = self.screen.has_class("-narrow")
        if narrow and not self.screen.has_class("-side-open"):
            setattr(self, flag, True)
            self.screen.add_class("-side-open")
        elif narrow:
            self.screen.remove_class("-side-open")
            self.query_one(PromptInput).focus()
        else:
            setattr(self, flag, not getattr(self, flag))
        self.settings_panel.set_class(not self.show_settings, "-hidden")
        self.inspector.set_class(not self.show_inspector, "-hidden")
        self.query_one("#side").set_class(not (self.show_settings or self.show_inspector), "-hidden")

    # -- settings ------------------------------------------------------------------------------

    @on(SettingsPanel.Changed)
    async def on_setting_changed(self, event: SettingsPanel.Changed) -> None:
        if event.name == "system":
            await self.set_system(self.settings_panel.system)
        else:
            self.persist_config()

    async def set_system(self, text: str) -> None:
        self.session.set_system(text)
        self.config.system_prompt = self.session.conversation.system
        self.settings_panel.refresh_values(system=self.config.system_prompt)
        self.persist_config()
        self.update_context()
        await self.note(f"system prompt: {text}" if text else "system prompt cleared", "system")

    # -- helpers -------------------------------------------------------------------------------

    async def note(self, text: str, kind: str = "info") -> None:
        await self.chat.add(Note(text, kind))

    async def show_conversation(self) -> None:
        await self.chat.show_conversation(self.session.conversation)
        self.update_context()
