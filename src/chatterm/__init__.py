"""chatterm: chat with GPT-style checkpoints in the terminal.

A small Python API sits beside the app (see README):

    from chatterm import load
    chat = load("checkpoints/chitchat")        # any supported checkpoint format
    print(chat.complete("User: hi\nAssistant:").text)
    for piece in chat.stream_text("Once upon a time"): print(piece, end="")
    logits = chat.logits([1, 2, 3])            # (3, vocab) float32 tensor
"""

__version__ = "0.1.0"


def load(path=None, **kwargs):
    """Load a checkpoint (default: the shipped chat model) into a `chatterm.api.Model`."""
    from .api import Model

    return Model.load(path, **kwargs)


__all__ = ["load", "__version__"]
