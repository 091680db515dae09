"""The conversation and where it lives: turns, the autosave store, the lock that keeps one process per chat."""
