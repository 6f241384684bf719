"""A streamed chat completion's usage (docs/protocol.md, Usage): the hub asks for it, and
passes the usage chunk on only to a client that asked for it."""

from __future__ import annotations

import json

from tether.actors import messages as m
from tether.http.openai_render import OpenAIRenderer, ask_for_usage, is_usage_chunk

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_the_hub_asks_for_usage_on_streamed_chats_only():
    sent, hide = ask_for_usage(CHAT, "chat/completions", True)
    assert sent == {**CHAT, "stream_options": {"include_usage": True}} and hide
    assert CHAT == {"messages": [{"role": "user", "content": "hi"}], "stream": True}  # kept
    asked = {**CHAT, "stream_options": {"include_usage": True}}
    assert ask_for_usage(asked, "chat/completions", True) == (asked, False)
    declined = {**CHAT, "stream_options": {"include_usage": False, "other": 1}}
    sent, hide = ask_for_usage(declined, "chat/completions", True)
    assert sent["stream_options"] == {"include_usage": True, "other": 1} and hide
    for endpoint, streaming in (("chat/completions", False), ("completions", True),
                                ("responses", True), ("embeddings", False)):
        assert ask_for_usage(CHAT, endpoint, streaming) == (CHAT, False)


def test_the_usage_chunk_is_held_back_from_a_client_that_did_not_ask():
    content = json.dumps({"choices": [{"delta": {"content": "a"}}], "usage": None})
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    compact = '{"choices":[],"usage":{"prompt_tokens":1}}'
    # Text that merely looks like one is never taken for it.
    lookalike = json.dumps({"choices": [{"delta": {"content": '"choices":[] "usage"'}}]})
    chunks = m.Chunks((content, usage, compact, lookalike))
    assert [is_usage_chunk(c) for c in chunks.data] == [False, True, True, False]
    assert OpenAIRenderer(hide_usage=True).part(chunks) == \
        f"data: {content}\n\ndata: {lookalike}\n\n"
    assert OpenAIRenderer().part(chunks) == "".join(f"data: {c}\n\n" for c in chunks.data)
