"""Conversations, chat templates, prompt fitting, persistence and the backend interface.

Nothing here imports torch at import time; `LocalBackend.load` does, when called.
"""

from .backends.contract import BackendInfo, ChatBackend
from .backends.factory import open_backend
from .chat import ChatSession, clean_message
from .chats.conversation import Conversation, Turn
from .commands import COMMANDS, Command, CommandError, is_command, parse_command
from .user.config import AppConfig, load_config, save_config
from .chats.persistence import (
    ConversationStore,
    NotAConversationError,
    read_conversation,
    write_conversation,
)
from .prompts.template import DEFAULT_TEMPLATE, ChatTemplate

__all__ = [
    "BackendInfo", "ChatBackend", "open_backend", "ChatSession", "clean_message", "COMMANDS", "Command", "CommandError",
    "is_command", "parse_command", "AppConfig", "load_config", "save_config", "Conversation", "Turn",
    "ConversationStore", "NotAConversationError", "read_conversation", "write_conversation", "DEFAULT_TEMPLATE",
    "ChatTemplate",
]
