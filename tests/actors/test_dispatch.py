"""Message dispatch (issue 12.6): each actor's `receive` takes one union of message classes
and matches on it exhaustively. mypy proves each union's every class has its case (make test runs
it); these tests prove the rest: that every message class has exactly one receiver, that the
checker really rejects a missed case, and that a message outside the union is dropped."""

from __future__ import annotations

import inspect
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

import pytest
from mypy import api as mypy_api

from tether.actors import events, outbox, records, supervisor_messages
from tether.actors import messages as m
from tether.actors.llm import LlmActor
from tether.actors.public_llm import PublicLlmActor
from tether.actors.session import SessionActor
from tether.actors.supervisor import Supervisor
from tether.actors.sweeper import Sweeper
from tether.cluster.supervisor import ClusterSupervisor
from tether.common.actor import Ping, TetherActor
from tether.publisher import messages as pm
from tether.publisher.backend import BackendActor

# A ClusterSupervisor is a Supervisor that takes more: only what it adds counts as its own.
# Messages to an Llm go to the actor of its name, whatever its kind: a PublicLlmActor takes
# some of what an LlmActor takes (see the test below), and nothing of its own.
HUB_ACTORS: dict[str, frozenset[type]] = {
    "Supervisor": Supervisor.accepts,
    "ClusterSupervisor": ClusterSupervisor.accepts - Supervisor.accepts,
    "LlmActor": LlmActor.accepts,
    "PublicLlmActor": PublicLlmActor.accepts - LlmActor.accepts,
    "SessionActor": SessionActor.accepts,
    "Sweeper": Sweeper.accepts,
}
# The one message with two receivers: the ClusterSupervisor drops the session from its
# directory, then tells the SessionActor to end its stream.
PASSED_ON = {m.Evict: ["ClusterSupervisor", "SessionActor"]}

# Where the actor messages are defined: every class there is one.
MESSAGE_MODULES = (m, supervisor_messages)


def classes_of(module: Any) -> set[type]:
    return {c for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__}


# What no actor receives: what messages carry, what a request's reply channel and a
# publisher's outbox carry.
NOT_RECEIVED = classes_of(records) | classes_of(events) | {outbox.Close, m.ReplyChannel}


def test_every_hub_message_has_exactly_one_receiver() -> None:
    receivers: dict[type, list[str]] = {}
    for actor, accepts in HUB_ACTORS.items():
        for cls in accepts:
            receivers.setdefault(cls, []).append(actor)
    messages = set().union(*(classes_of(module) for module in MESSAGE_MODULES)) - NOT_RECEIVED
    assert {cls: sorted(names) for cls, names in receivers.items()
            if len(names) != 1} == PASSED_ON
    assert sorted(c.__name__ for c in messages - receivers.keys()) == []  # nobody receives
    assert sorted(c.__name__ for c in receivers.keys() - messages) == []  # not a message


def test_what_messages_and_channels_carry_no_actor_receives() -> None:
    received = set().union(*(actor.accepts for actor in (
        Supervisor, ClusterSupervisor, LlmActor, PublicLlmActor, SessionActor, Sweeper)))
    assert {m.LlmState, m.Failed, m.Close} <= NOT_RECEIVED
    assert sorted(c.__name__ for c in NOT_RECEIVED & received) == []


def test_one_import_names_every_message_and_what_they_carry() -> None:
    for cls in classes_of(supervisor_messages) | NOT_RECEIVED:
        assert getattr(m, cls.__name__, None) is cls, f"m.{cls.__name__}"


def test_a_public_llm_takes_only_what_any_llm_actor_takes() -> None:
    assert PublicLlmActor.accepts == {m.Infer, m.Withdraw, m.TaskEnded, m.Retire}
    assert PublicLlmActor.accepts < LlmActor.accepts


def test_every_publisher_message_is_a_backend_actors() -> None:
    assert BackendActor.accepts == classes_of(pm)


def run_mypy(tmp_path: Path, cases: list[type]) -> tuple[str, int]:
    """Type-check an actor over the supervisor's union that handles only `cases`."""
    arms = "".join(f"            case m.{c.__name__}():\n                return None\n"
                   for c in cases)
    source = tmp_path / "actor_under_check.py"
    source.write_text(textwrap.dedent("""\
        from typing import Any, assert_never

        from tether.common.actor import TetherActor
        from tether.actors import messages as m


        class UnderCheck(TetherActor):
            def receive(self, message: m.SupervisorMessage) -> Any:
                match message:
        """) + arms + "            case _:\n                assert_never(message)\n")
    out, err, status = mypy_api.run([
        str(source), "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"),
        "--config-file", str(Path(__file__).resolve().parents[2] / "setup.cfg")])
    return out + err, status


@pytest.mark.timeout(180)
def test_the_type_checker_rejects_a_message_without_its_case(tmp_path: Path) -> None:
    every = sorted(Supervisor.accepts, key=lambda c: c.__name__)
    out, status = run_mypy(tmp_path, every)
    assert status == 0, out
    missed = next(c for c in every if c is not m.Register)
    out, status = run_mypy(tmp_path, [c for c in every if c is not missed])
    assert status == 1, out
    assert f'"{missed.__name__}"' in out and "assert_never" in out, out


@dataclass(frozen=True)
class Hello:
    name: str


@dataclass(frozen=True)
class Bye:
    pass


class Greeter(TetherActor):
    def receive(self, message: Hello | Bye) -> Any:
        match message:
            case Hello(name):
                return f"hello {name}"
            case Bye():
                return "bye"
            case _:
                assert_never(message)


@pytest.fixture
def greeter() -> Any:
    ref = Greeter.start()
    yield ref
    ref.stop()


def test_the_union_is_what_the_actor_accepts(greeter: Any) -> None:
    assert Greeter.accepts == {Hello, Bye}
    assert Sweeper.accepts == {m.Sweep}  # one class, not a union
    assert ClusterSupervisor.accepts > Supervisor.accepts  # a wider union
    assert greeter.ask(Hello("you"), timeout=5) == "hello you"
    assert greeter.ask(Bye(), timeout=5) == "bye"


def test_a_message_outside_the_union_is_logged_and_dropped(
    greeter: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tether.actors"):
        assert greeter.ask(m.Sweep(), timeout=5) is None
    assert "ignored an unknown message 'Sweep'" in caplog.text
    assert greeter.ask(Ping(), timeout=5) is True  # still alive
