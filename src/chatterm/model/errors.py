"""Errors a user can cause by pointing chatterm at the wrong file."""


class CheckpointError(Exception):
    """A checkpoint could not be loaded. The message is one sentence naming the file and the fix."""
