"""An alias's infer from target to target (tether/actors/aliases.py), without actors: where
`pass_on` sends it, and what `taken` makes of it (docs/protocol.md, Aliases)."""

from __future__ import annotations

import queue

from tether.actors import aliases
from tether.actors import messages as m


class Targets:
    """A Forward over a set of names that have an actor; records what it was told."""

    def __init__(self, *known: str) -> None:
        self.known = set(known)
        self.told: list[tuple[str, m.AliasRoute]] = []

    def __call__(self, name: str, infer: m.Infer) -> bool:
        if name not in self.known:
            return False
        assert infer.alias is not None
        self.told.append((name, infer.alias))
        return True


def infer(*rest: str, failover: bool = False, waiting: str | None = None) -> m.Infer:
    return m.Infer({"model": "assistant", "messages": []}, False, "chat/completions",
                   queue.Queue(), alias=m.AliasRoute("assistant", rest, waiting,
                                                     failover=failover))


def events(msg: m.Infer) -> list[object]:
    out = []
    while not msg.reply.empty():  # type: ignore[attr-defined]
        out.append(msg.reply.get_nowait())  # type: ignore[attr-defined]
    return out


def test_it_goes_to_the_next_target_that_has_an_actor() -> None:
    targets = Targets("cloud", "other")
    assert aliases.pass_on(infer("unknown", "cloud", "other"), None, False, targets)
    assert targets.told == [("cloud", m.AliasRoute("assistant", ("other",)))]


def test_a_waking_target_is_remembered_and_waits_last_when_none_can_serve() -> None:
    targets = Targets("cloud")
    msg = infer("cloud")
    assert aliases.pass_on(msg, "gpu", True, targets)  # gpu wakes: on to cloud meanwhile
    assert targets.told == [("cloud", m.AliasRoute("assistant", (), waiting="gpu"))]
    onward = m.Infer(msg.request, False, msg.endpoint, msg.reply, alias=targets.told[0][1])
    targets.known.add("gpu")
    assert aliases.pass_on(onward, "cloud", False, targets)  # cloud cannot serve either
    assert targets.told[1] == ("gpu", m.AliasRoute("assistant", (), "gpu", wait=True))


def test_the_waking_target_keeps_it_when_it_is_the_last_one() -> None:
    assert not aliases.pass_on(infer("unknown"), "gpu", True, Targets())


def test_a_failover_never_waits_for_a_wake() -> None:
    msg = infer(failover=True)
    assert aliases.pass_on(msg, "gpu", True, Targets("gpu"))
    [failed] = events(msg)
    assert isinstance(failed, m.Failed) and failed.error.code == "publisher_offline"
    assert "assistant" in failed.error.message


def test_taken_names_the_target_in_the_task_and_tells_the_client() -> None:
    msg = infer("cloud")
    served = aliases.taken(msg, "gpu")
    assert served.alias is None and served.request["model"] == "gpu"
    assert msg.request["model"] == "assistant"  # the client's body is not changed
    assert events(msg) == [m.Routed("gpu")]
    direct = m.Infer({"messages": []}, False, "chat/completions", queue.Queue())
    assert aliases.taken(direct, "gpu") is direct
