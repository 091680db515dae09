"""Finding a chat: `/chats TEXT` and the chats list's filter line search every saved chat's
messages, not only the titles of the recent ones; lines never wrap at 80 columns."""

from __future__ import annotations

import os
import time

from test_chats import PARROT, data_dir, make_app, make_repl, saved_chat

from chatterm.session import Conversation, ConversationStore
from helpers import wait_until


def chat_with_reply(store, first, reply, age):
    conversation = Conversation()
    conversation.add("user", first)
    conversation.add("assistant", reply)
    path = store.save(conversation)
    store.close()
    os.utime(path, (time.time() - age,) * 2)
    return conversation


def test_the_store_finds_words_in_any_message_of_any_chat(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    paris = chat_with_reply(store, "capital of France?", "It is Paris, on the Seine.", age=500)
    for i in range(40):  # more recent chats than the list shows
        saved_chat(store, f"filler {i}", age=i)
    found = store.list_chats(30, "the SEINE")
    assert [c.id for c in found] == [paris.id]
    assert found[0].found == "It is Paris, on the Seine." and found[0].title == "capital of France?"
    assert [c.found for c in store.list_chats(30, "filler 3")][:1] == [""]  # in the title: no excerpt
    assert store.list_chats(30, "nowhere to be found") == []


def test_the_repl_lists_the_chats_holding_the_text(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    chat_with_reply(store, "capital of France?", "Paris.", age=10)
    saved_chat(store, "something else")
    repl, out, err = make_repl(store)
    repl.run(["/chats paris\n"])
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("capital of France? · Paris.")
    repl.run(["/load 1\n"])
    assert repl.session.conversation.turns[0].text == "capital of France?"
    repl.run(["/chats zebra\n"])
    assert err.getvalue().splitlines()[-1] == "no saved chat holds 'zebra'"


async def test_the_chats_list_filters_as_you_type_and_never_wraps_at_80_columns():
    from textual.widgets import OptionList

    from chatterm.ui.chats_screen import ChatsScreen

    store = ConversationStore(data_dir() / "conversations")
    wanted = chat_with_reply(store, "a long first message " * 6, "the answer mentions aardvarks", age=100)
    saved_chat(store, "another chat with a title long enough to need cutting at eighty columns, surely")
    app = make_app(PARROT, resume="pick")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChatsScreen), what="the chats list")
        screen = app.screen
        listing = screen.query_one(OptionList)
        await pilot.pause()
        assert len(screen.chats) == 2
        for option in listing.options:
            assert len(str(option.prompt)) <= listing.scrollable_content_region.width
        assert all(listing.get_option_at_index(i) for i in range(2)) and listing.virtual_size.height == 2
        await pilot.press("slash", *"aardv")
        await wait_until(pilot, lambda: [c.id for c in screen.chats] == [wanted.id], what="the filter")
        await pilot.press("escape")  # back to the list, the filter kept
        assert screen.focused is listing and [c.id for c in screen.chats] == [wanted.id]
        await pilot.press("slash", "enter")  # Enter in the filter line opens the highlighted chat
        await wait_until(pilot, lambda: app.session.conversation.id == wanted.id, what="the chat to open")
