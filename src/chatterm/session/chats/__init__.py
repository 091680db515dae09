"""The conversation and where it lives: turns, the autosave store, saved chats by name, the lock that keeps one process per chat."""
