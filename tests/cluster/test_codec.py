"""The bus's JSON codec (tether.cluster.codec): messages round-trip with their live parts
as plain addresses, and nothing outside the allow-list is built from a payload."""

from __future__ import annotations

import json
import queue

import pytest

from tether.actors import messages as m
from tether.cluster import codec
from tether.errors import TetherError


class Ref:
    """A stand-in actor ref (what the codec sees of one: tell and actor_urn)."""

    def __init__(self, address: codec.Address) -> None:
        self.address = address
        self.actor_urn = "urn:" + ":".join(address)

    def tell(self, message: object) -> None:
        raise AssertionError("the codec never sends")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.address == self.address


class Reply:
    is_remote_reply = True

    def __init__(self, address: codec.Address) -> None:
        self.address = address

    def put(self, item: object) -> None:
        raise AssertionError("the codec never puts")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and other.address == self.address


def hooks() -> codec.Hooks:
    local: dict[int, codec.Address] = {}

    def reply_address(reply: object) -> codec.Address:
        if isinstance(reply, Reply):
            return reply.address
        return local.setdefault(id(reply), ("reply", "p1", f"r{len(local)}"))

    return codec.Hooks(ref_address=lambda ref: ref.address, reply_address=reply_address,
                       ref=Ref, reply=Reply)


def roundtrip(message: object) -> object:
    h = hooks()
    text = codec.dumps(message, h)
    json.loads(text)  # plain JSON, nothing else
    return codec.loads(text, h)


def test_an_infer_crosses_with_its_reply_channel_as_an_address() -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], "n": 1, "x": None,
               "$": "a client may send this key", "nested": {"$": "msg", "t": "Crash"}}
    sent = m.Infer(request, True, "chat/completions", queue.Queue(), affinity="k")
    got = roundtrip(sent)
    assert isinstance(got, m.Infer)
    assert got.request == request  # a body's own "$" keys are data, never tags
    assert (got.streaming, got.endpoint, got.affinity) == (True, "chat/completions", "k")
    assert got.reply == Reply(("reply", "p1", "r0"))


def test_a_returned_task_crosses_with_its_clients_channel() -> None:
    got = roundtrip(m.TaskReturned("1-t", TetherError(503, "publisher_disconnected", "gone"),
                                   queue.Queue()))
    assert isinstance(got, m.TaskReturned) and got.task_id == "1-t"
    assert got.reply == Reply(("reply", "p1", "r0"))  # an actor that never knew it answers
    assert (got.error.status, got.error.code) == (503, "publisher_disconnected")


def test_refs_links_and_tuples_keep_their_shape() -> None:
    link = m.SessionLink("s1", 7, Ref(("session", "p2", "s1")), "p2")
    info = m.MemberInfo(link, "active", 3, True)
    got = roundtrip(info)
    assert got == info and got.session.ref == Ref(("session", "p2", "s1"))
    assert got.session.home == "p2"
    released = roundtrip(m.ReleaseTasks("a", ("t1", "t2"), Ref(("llm", "", "a"))))
    assert released.task_ids == ("t1", "t2") and released.llm == Ref(("llm", "", "a"))


def test_errors_cross_as_status_code_message() -> None:
    got = roundtrip(m.Failed(TetherError(503, "publisher_offline", "gone", param="p")))
    assert isinstance(got.error, TetherError)
    assert (got.error.status, got.error.code, got.error.message, got.error.param) == (
        503, "publisher_offline", "gone", "p")


def test_dispatched_crosses_as_its_task_id_alone() -> None:
    got = roundtrip(m.Dispatched("1.abc-0123", cancel=lambda why: None))
    assert got == m.Dispatched("1.abc-0123") and got.cancel is None


def test_reply_events_round_trip() -> None:
    for event in (m.Chunks(("a", "b")), m.StreamDone(), m.WakePending(), m.Queued(),
                  m.Completed(200, {"choices": [{"text": "x"}]})):
        assert roundtrip(event) == event


def test_anything_outside_the_allow_list_is_refused_both_ways() -> None:
    with pytest.raises(codec.CodecError):
        codec.dumps(m.Drain(), hooks())  # not a message that crosses
    with pytest.raises(codec.CodecError):
        codec.dumps(object(), hooks())
    for payload in (
        {"$": "msg", "t": "Crash", "f": {}},  # a real class, not allowed
        {"$": "msg", "t": "os.system", "f": {}},
        {"$": "msg", "t": "TaskEnded", "f": {"task_id": "t", "evil": 1}},
        {"$": "ref", "a": ["llm", 1, "x"]},
        {"$": "pickle", "v": "gASV"},
    ):
        with pytest.raises(codec.CodecError):
            codec.loads(json.dumps(payload), hooks())
    with pytest.raises(codec.CodecError):
        codec.loads(b"\x80not json", hooks())
