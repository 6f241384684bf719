"""Ordered start and stop (issue 12.7): ActorSystem.start starts its parts in order and, when
a later part fails, stops those that started, in reverse, before the error goes on up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
import pykka
import pytest

from tests.support.actors import provider
from tether.actors.supervisor import Supervisor
from tether.actors.sweeper import Sweeper
from tether.actors.system import ActorSystem
from tether.config import PublicLlm, Settings
from tether.errors import TetherError
from tether.store import db
from tether.store import llms as store


def pooled_connections() -> int:
    """Connections the database pool holds, idle or in use (playhouse.pool keeps both)."""
    pool = db.database.obj
    return len(pool._connections) + len(pool._in_use)


def no_thread(*_args: Any, **_kwargs: Any) -> Any:
    """What starting an actor raises when the process has no thread left."""
    raise RuntimeError("can't start new thread")


def settings(tmp_path: Path) -> Settings:
    # A public Llm and (below) a published one: the supervisor starts children for both.
    cloud = PublicLlm("cloud", "openai", "m", "http://127.0.0.1:9/v1")
    return Settings(database_url=f"sqlite:///{tmp_path / 'start.db'}", llms=(cloud,))


@pytest.fixture
def published(tmp_path: Path) -> Settings:
    """A database with a row for a published Llm, left by an earlier hub process."""
    first = ActorSystem(settings(tmp_path)).start()
    first.register("s1", [provider("local")])
    first.stop()
    assert pykka.ActorRegistry.get_all() == []
    return settings(tmp_path)


def test_a_failing_later_part_leaves_nothing_running(
    published: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def no_thread_left(*args: Any, **kwargs: Any) -> pykka.ActorRef:
        # What ran by then: the database, the supervisor and the children it started.
        seen["actors"] = sorted(ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all())
        seen["connections"] = pooled_connections()
        no_thread()

    monkeypatch.setattr(Sweeper, "start", no_thread_left)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        ActorSystem(published).start()
    assert seen["actors"] == ["LlmActor", "PublicLlmActor", "SessionActor", "Supervisor"]
    assert seen["connections"] > 0
    assert pykka.ActorRegistry.get_all() == []
    assert pooled_connections() == 0


def test_a_supervisor_that_cannot_load_the_rows_leaves_nothing_running(
    published: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable() -> list:
        raise peewee.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "list_all", unreadable)
    with pytest.raises(TetherError):  # its Ping finds it dead: 503 shutting_down
        ActorSystem(published).start()
    assert pykka.ActorRegistry.get_all() == []
    assert pooled_connections() == 0


def test_a_system_started_after_a_failed_start_serves(
    published: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(Supervisor, "start", no_thread)
        with pytest.raises(RuntimeError):
            ActorSystem(published).start()
    system = ActorSystem(published).start()
    try:
        assert system.healthy()
        assert {row["name"] for row in system.read(store.list_all())} == {"cloud", "local"}
    finally:
        system.stop()
    assert pykka.ActorRegistry.get_all() == []
    assert pooled_connections() == 0
