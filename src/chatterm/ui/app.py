"""ChatApp: the Textual front end.

The app is interactive at once; the model loads in a thread worker. Replies stream through
`ReplyStream` (reply_stream.py), the side column toggles itself (side_panel.py), and slash
commands run in `session.commands.SlashCommands`, which reports back through the `FrontEnd`
methods in front_end.py. Everything the user can do is a bound action with an id (remappable from
the config file's [keys], checked by keys.py), in the command palette (`palette.ChatCommands`)
and in /help. This module imports neither torch nor the model: the first frame never waits.
"""

from __future__ import annotations

import collections
import time
import weakref

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from ..model.errors import first_line
from ..session import ChatSession, Conversation, ConversationStore, is_command
from ..session.commands import SlashCommands
from ..session.context_fit import fit_context
from ..session.user.config import AppConfig
from ..session.user.folders import config_dir, data_dir
from ..session.user.input_history import InputHistory
from ..session.user.layered_settings import CONFIG, MODEL, LayeredSettings, peek_recommendation
from .chat_view import ChatView, UserMessage
from .front_end import TuiFrontEnd
from .inspector import TokenInspector
from .keys import check_keymap, class_bindings
from .message_actions import MessageActions
from .messages import ModelFailed, ModelLoaded, ReplyFinished, ReplyProgress
from .navigation import Navigation
from .palette import ChatCommands
from .prompt_input import PromptInput
from .reply_stream import INSPECT_TOP, ReplyStream
from .send_queue import SendQueue
from .settings_panel import SettingsPanel
from .side_panel import SidePanel
from .status_bar import StatusBar
from .terminal_keys import recognise_alt_enter
from .themes import load_themes, theme_folders

__all__ = ["ChatApp", "INSPECT_TOP"]
NARROW_BELOW = 90  # columns: below this the side column folds away (F2/F3 open it over the chat)


class ChatApp(Navigation, MessageActions, TuiFrontEnd, App):
    CSS_PATH = "app.tcss"
    TITLE = "chatterm"
    COMMANDS = App.COMMANDS | {ChatCommands}
    # Textual sets the class of the range the width falls in; only -narrow is styled.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_BELOW, "-wide")]
    # The footer shows the keys that matter most, with short labels, in the order they fit at
    # 80 columns (Help first: it must never be cut); the rest are in Ctrl+P and /help.
    BINDINGS = [
        Binding("f1", "help", "Help", id="help"),
        Binding("escape", "stop", "Stop", id="stop"),
        Binding("ctrl+r", "retry", "Retry", id="retry"),
        # Not ctrl+z / ctrl+e: the message editor uses those itself (keys.py checks remaps for this).
        Binding("ctrl+b", "undo", "Undo", id="undo"),
        Binding("ctrl+o", "edit", "Edit last", show=False, id="edit"),  # or the selected message (message_actions.py)
        # message_actions.py: keys the message box leaves alone, and that tmux passes through.
        Binding("ctrl+t", "continue", "Continue", id="continue", show=False),
        Binding("alt+up", "select_previous", "Select message", id="select_previous", show=False),
        Binding("alt+down", "select_next", "Select next", id="select_next", show=False),
        Binding("alt+left", "previous_alternative", "Previous version", id="previous_alternative", show=False),
        Binding("alt+right", "next_alternative", "Next version", id="next_alternative", show=False),
        # A terminal's Alt+C is ESC c: without priority the message box would type the "c".
        Binding("alt+c", "copy", "Copy", id="copy", show=False, priority=True),
        Binding("ctrl+g", "editor", "Editor", id="editor", show=False),
        Binding("ctrl+n", "clear", "New chat", show=False, id="clear"),
        Binding("f2", "toggle_settings", "Settings", id="toggle_settings"),
        Binding("f3", "toggle_inspector", "Tokens", id="toggle_inspector"),
        Binding("f4", "toggle_thinking", "Thinking", id="toggle_thinking", show=False),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
        # The message box forwards these itself (it would page through its own text).
        Binding("pageup,shift+pageup", "scroll_chat('page_up')", "Scroll up", show=False),
        Binding("pagedown,shift+pagedown", "scroll_chat('page_down')", "Scroll down", show=False),
        Binding("ctrl+home", "scroll_chat('home')", "Chat top", show=False),
        Binding("ctrl+end", "scroll_chat('end')", "Chat end", show=False),
    ]
    ACTION_HELP = {  # longer titles for the command palette and /help
        "stop": "Stop the reply (the partial reply stays)",
        "retry": "Regenerate the last reply",
        "undo": "Undo the last exchange",
        "edit": "Edit the selected message (default: your last one)",
        "continue": "Continue the last reply (cut short or stopped)",
        "select_previous": "Select the message above (Esc clears)",
        "select_next": "Select the message below",
        "previous_alternative": "Show the previous version of the selected (or last) message",
        "next_alternative": "Show the next version of the selected (or last) message",
        "copy": "Copy the selected message (default: the last reply)",
        "editor": "Write the message in $VISUAL / $EDITOR",
        "clear": "Clear: start a new conversation",
        "toggle_settings": "Show or hide the settings panel",
        "toggle_inspector": "Show or hide the token inspector",
        "toggle_thinking": "Show or fold a thinking model's reasoning (the selected or last reply's)",
        "help": "Help: commands and keys",
        "quit": "Quit chatterm",
        "scroll_chat('page_up')": "Scroll the chat up a page (the message box keeps the focus)",
        "scroll_chat('page_down')": "Scroll the chat down a page",
        "scroll_chat('home')": "Scroll to the start of the chat",
        "scroll_chat('end')": "Scroll to the end of the chat (and follow new text)",
    }

    def __init__(self, config: AppConfig, checkpoint: str | None, problems: list[str] | None = None,
                 *, settings: LayeredSettings | None = None, backend_options: dict | None = None,
                 resume: str = "") -> None:
        super().__init__()
        self.resume = resume  # "last" (-c) or "pick" (--resume): see SlashCommands.resume
        recognise_alt_enter()  # before the driver starts reading keys
        self.config = config
        self.checkpoint = checkpoint
        # How to open models (device, dtype, --context, a server's flags): for the first one and
        # for every `/model` after it, as in the plain REPL.
        self.backend_options = backend_options or {"device": config.device, "dtype": config.dtype}
        self.problems = list(problems or [])
        if settings is None:  # no command line: the config's values are the user's layer
            settings = LayeredSettings()
            settings.set_layer(CONFIG, config.sampling)
        # The model's recommended values from the first frame (loading it sets them again).
        settings.set_layer(MODEL, peek_recommendation(checkpoint))
        self.session = ChatSession(
            None, settings.live, Conversation(system=config.system_prompt), ConversationStore(data_dir() / "conversations"),
            warn=lambda text: self.notify(text, severity="warning", markup=False),  # any thread; autosave failures
        )
        self.commands = SlashCommands(self.session, settings, config, self)
        self.checked_keys: dict[str, str] = {}
        self._warnings_shown: set[str] = set()  # the backend's warnings already in the chat
        self.inspect = INSPECT_TOP
        # The inspector's view of each reply streamed in this session, by turn (front_end.py shows the
        # one on screen after a switch of versions or an undo).
        self.token_records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.recent_notes: collections.deque[str] = collections.deque(maxlen=50)  # passing notes (front_end.py)

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ChatView(id="chat")
                yield PromptInput(id="input", history=InputHistory.default())
            yield SidePanel(self.commands.settings, self.config.system_prompt, id="side")
        yield StatusBar(id="status")
        yield Footer(compact=True)  # compact: the keys that matter fit in 80 columns

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def side(self) -> SidePanel:
        return self.query_one(SidePanel)

    @property
    def settings_panel(self) -> SettingsPanel:
        return self.query_one(SettingsPanel)

    @property
    def inspector(self) -> TokenInspector:
        return self.query_one(TokenInspector)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def on_mount(self) -> None:
        self.replies = ReplyStream(self, self.chat, self.inspector, self.status)
        self.queue = SendQueue(self.chat)
        self._apply_themes()
        self._apply_keys()
        prompt = self.prompt
        prompt.border_title = "Message · Enter sends · Ctrl+J newline · /help"
        prompt.focus()
        self.keep_focus()
        for problem in self.problems:
            self.note(problem, "error")
        self.status.busy = "loading model"
        self.load_model(self.checkpoint)
        if self.resume:
            self.commands.resume(self.resume)

    def on_unmount(self) -> None:
        """The app is done, however it ends (Ctrl+Q, the web driver's quit, a signal): stop the
        reply in flight and close the backend (its worker closes it when that reply ends)."""
        self.session.close()

    def _apply_themes(self) -> None:
        themes, problems = load_themes(theme_folders(config_dir()))
        for theme in themes:
            self.register_theme(theme)
        self.problems += problems
        if self.config.theme not in self.available_themes:
            self.problems.append(f"unknown or unusable theme {self.config.theme!r}; using chatterm-dark")
            self.config.theme = "chatterm-dark"
        self.theme = self.config.theme

    def _apply_keys(self) -> None:
        widget_bindings = class_bindings(TokenInspector) + class_bindings(PromptInput) + class_bindings(SettingsPanel)
        self.checked_keys, problems = check_keymap(self.config.keys, list(self.BINDINGS), widget_bindings, PromptInput)
        self.problems += problems
        if self.checked_keys:
            self.set_keymap(self.checked_keys)

    # -- model loading -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, path: str | None) -> None:
        started = time.perf_counter()
        try:
            from ..session.backends.factory import open_backend

            if path is None:
                from ..session.user.folders import default_checkpoint

                if not default_checkpoint().exists():
                    self.post_message(ModelFailed(
                        f"the default model is not installed ({default_checkpoint()}); "
                        "load a checkpoint with /model PATH"))
                    return
                path = str(default_checkpoint())
            backend = open_backend(path, progress=self._loading_progress, **self.backend_options)
        except Exception as e:  # a bad file must never take the app down: one line, old model kept
            message = first_line(e)
            self.post_message(ModelFailed(message))
            return
        self.post_message(ModelLoaded(backend, time.perf_counter() - started))

    def _loading_progress(self, what: str, fraction: float) -> None:
        """Called on the torch thread while a big model loads."""
        self.call_from_thread(setattr, self.status, "busy", f"loading {what} {fraction:.0%}" if fraction < 1 else "")

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.status.busy = ""
        backend = message.backend
        self.commands.use_backend(backend)
        info = backend.info
        self.status.model = info.name
        self.status.device = f"{info.device} {info.dtype}"
        self.status.note = ""
        size = f"{info.parameters / 1e6:.1f}M parameters, " if info.parameters else ""
        self.welcome()  # (first, so that the load note stays the last note, as before)
        self.note(f"loaded {info.name} ({size}window {info.context_window}) in {message.seconds:.1f} s")
        if not self.busy:  # (a reply's own prompt fitting is under way otherwise)
            fit_context(self.session)  # a smaller window may hold fewer of the turns on screen
        self.update_context()
        self._warnings_shown.clear()  # a new backend: its warnings are news again
        self.settings_panel.show_when_changes_apply(backend.settings_apply_mid_reply)
        self._show_backend_news()
        self.send_queued()

    def _show_backend_news(self) -> None:
        """What the backend learnt since last asked (a server's refusals, a mode switch): its new
        warnings as notes, the settings it ignores greyed out. After loading and after each reply."""
        backend = self.session.backend
        for warning in backend.warnings:
            if warning not in self._warnings_shown:
                self._warnings_shown.add(warning)
                self.note(warning, "error")
        self.settings_panel.mark_unsupported(backend.supported_settings)

    def on_model_failed(self, message: ModelFailed) -> None:
        self.status.busy = ""
        self.note(f"could not load the model: {message.error}", "error")
        if self.session.backend is None:
            self.status.model = "no model"
            self.status.note = "/model PATH loads one"
            self.take_back_queued()

    # -- sending and streaming -----------------------------------------------------------------

    @on(PromptInput.Submitted)
    def on_prompt(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if is_command(text.strip()):
            self.commands.run(text.strip())
            return
        if self.session.editing is not None:
            self.submit_edit(text)  # message_actions.py
            return
        self.send(text[1:] if text.startswith("//") else text)

    def send(self, text: str) -> None:
        if self.busy or self.session.backend is None:
            self.queue.add(text)  # sent when the reply ends or a model is ready (send_queue.py)
            if self.session.backend is None and not self.model_loading:
                self.note("no model loaded yet: /model PATH loads one (your message is queued)", "error")
            return
        try:
            events = self.session.send(text, inspect=INSPECT_TOP)
        except ValueError as e:
            self.note(str(e), "error")
            return
        self.chat.mount(UserMessage(self.session.conversation.turns[-1].text))
        self.chat.follow()  # sending brings the newest text back into view
        self.update_context()  # the meter counts the message now, not when its reply ends (the
        # reply's worker has not started yet: nothing else is building a prompt)
        self.stream_reply(events)

    @property
    def model_loading(self) -> bool:
        return any(worker.group == "model" and not worker.is_finished for worker in self.workers)

    def send_queued(self) -> None:
        if self.queue.pending and not self.busy and self.session.backend is not None:
            self.send(self.queue.take())

    def _can_reply(self) -> bool:
        if self.busy:
            self.note("a reply is still streaming; Esc stops it", "error")
            return False
        if self.session.backend is None:
            self.note("no model loaded yet; wait for it, or /model PATH", "error")
            return False
        return True

    async def on_reply_progress(self, message: ReplyProgress) -> None:
        await self.replies.progress(message)
        if message.trimmed:
            self.chat.mark_context(self.session.conversation.context_start)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        turns = self.session.conversation.turns
        # The session wrote the turn with its note ("stopped", "cut at max_new_tokens", an error).
        note = turns[-1].note if message.done is not None and turns and turns[-1].role == "assistant" else ""
        await self.replies.finished(message, note)
        if message.withdrawn:  # the message is out of the conversation (session/chat.py: _relay)
            self.chat.show_conversation(self.session.conversation)
            self.note(f"error: {message.error}", "error")
        self.mark_messages()  # a regenerated reply's "2/3"
        if self.session.backend is not None:
            self._show_backend_news()
        self.update_context()
        self.send_queued()

    def update_context(self) -> None:
        self.chat.mark_context(self.session.conversation.context_start)
        self.status.unsaved = bool(self.session.save_failure)  # each turn is saved as it changes
        backend = self.session.backend
        if backend is not None:
            try:
                tokens = self.session.context_tokens()
            except ValueError:  # the tokenizer fails on a message: the reply said so; the meter stays
                return
            self.status.context = (tokens, backend.info.context_window)
            self.status.context_is_estimate = backend.context_is_estimate

    # -- actions -------------------------------------------------------------------------------

    def action_quit(self) -> None:
        self.quit()

    def action_retry(self) -> None:
        if self._can_reply():
            self.commands.run("/retry")

    def action_undo(self) -> None:
        self.commands.run("/undo")

    async def action_clear(self) -> None:
        if self.busy:  # Ctrl+N stops the reply first, then starts afresh
            self.session.stop()
            await self.workers.wait_for_complete()
            self.replies.abandon()
        self.take_back_queued()
        self.inspector.reset()
        self.commands.run("/clear")

    def action_toggle_thinking(self) -> None:
        self.toggle_thinking()  # front_end.py

    def action_help(self) -> None:
        self.commands.run("/help")

    # -- settings ------------------------------------------------------------------------------

    @on(SettingsPanel.Changed)
    def on_setting_changed(self, event: SettingsPanel.Changed) -> None:
        if event.name == "system":
            self.commands.set_system(self.settings_panel.system)
        else:
            self.update_context()

    @on(SettingsPanel.SaveDefaults)
    def on_save_defaults(self) -> None:
        self.commands.save_defaults()
