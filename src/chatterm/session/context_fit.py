"""Which turns the next prompt will hold, known before it is built.

A conversation's `context_start` (the oldest turn still in the model's context) is advanced when
a prompt is built. After `/load` of a long chat, or a switch to a model with a smaller window, it
is stale until the next message: the context meter would count the whole chat (885/512) and no
turn would be marked as out of context. `fit_context` advances it now, by the rule prompt
building uses (prompts/prompt_fit.py): when the turns in context leave less than room for a reply, whole
oldest turns are dropped down to about half the window, and the context opens on a user turn.
It asks the backend only for `context_tokens`, so local and remote backends fit alike.
"""

from __future__ import annotations

from .chat import ChatSession
from .prompts.prompt_fit import fit_turns, prompt_budget


def fit_context(session: ChatSession) -> int:
    """Advance `session.conversation.context_start` as the next prompt would; returns how many
    turns it dropped from the context (0 when everything fits or no model is loaded)."""
    backend = session.backend
    conversation = session.conversation
    turns = conversation.turns
    if backend is None or not turns:
        return 0
    window = backend.info.context_window
    before = conversation.context_start

    def size(start: int) -> int:
        conversation.context_start = start
        return session.context_tokens()

    # A chat that ends on a reply may drop every turn (the next message then opens the context);
    # one that ends on a user message keeps that message, as prompt building does.
    keep = len(turns) if turns[-1].role == "assistant" else len(turns) - 1
    budget = prompt_budget(window, session.settings.max_new_tokens)
    conversation.context_start = fit_turns(turns, before, size, budget=budget, window=window, keep=keep)
    return conversation.context_start - before
