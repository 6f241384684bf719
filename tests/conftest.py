from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support import postgres
from tests.support.factory import factory
from tests.support.hub import Hub
from tests.support.publisher import TestPublisher
from tests.support.raw_server import Peer, RawServer
from tether.actors.system import ActorSystem
from tether.config import Settings

# For tests that must hold on both stores: `@BOTH_DATABASES` on a test using `hub`, or
# `@pytest.mark.parametrize("database", DATABASES)` and `hub_factory(database=database)`.
DATABASES = ["sqlite", "postgresql"]
BOTH_DATABASES = pytest.mark.parametrize("hub", DATABASES, indirect=True)


@pytest.fixture(autouse=True)
def _no_hub_outlives_its_test() -> Iterator[None]:
    yield
    for hub in list(Hub.live):  # started by a test that failed before stopping it
        hub.stop(signal.SIGKILL)


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    hubs: list[Hub] = []
    databases: list[postgres.Database] = []

    def make(env: dict[str, str] | None = None, database: str = "sqlite",
             **settings: Any) -> Hub:
        if database == "postgresql" and "database_url" not in settings:
            databases.append(postgres.create())  # a fresh one, dropped after the hubs stop
            settings["database_url"] = databases[-1].url
        hub = Hub(tmp_path, env=env, **settings).start()
        hubs.append(hub)
        return hub

    yield make
    try:
        for hub in hubs:
            hub.stop()
    finally:
        for db in databases:  # even when a hub would not stop: no database is left behind
            db.drop()


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], request: pytest.FixtureRequest) -> Hub:
    return hub_factory(database=getattr(request, "param", "sqlite"))


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, for tests of the store on its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    db = postgres.create()
    yield db.url
    db.drop()


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., ActorSystem]]:
    """Actor systems in-process (no HTTP), on one SQLite file, without publisher grace."""
    def build(**overrides: Any) -> ActorSystem:
        settings = dataclasses.replace(
            Settings(database_url=f"sqlite:///{tmp_path / 'unit.db'}", publisher_grace_s=0),
            **overrides,
        )
        return ActorSystem(settings).start()

    yield from factory(build, ActorSystem.stop)


@pytest.fixture
def system(system_factory: Callable[..., ActorSystem]) -> ActorSystem:
    return system_factory()


@pytest.fixture
def publisher_factory(hub: Hub) -> Iterator[Callable[..., TestPublisher]]:
    def build(session_id: str | None = None, url: str | None = None) -> TestPublisher:
        return TestPublisher(url or hub.url, session_id)

    yield from factory(build, TestPublisher.close)


@pytest.fixture
def publisher(publisher_factory: Callable[..., TestPublisher]) -> TestPublisher:
    return publisher_factory()


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def backend_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from tests.support.procs import DemoBackend

    def build(start: bool = True, port: int | None = None,
              api_key: str | None = None) -> DemoBackend:
        backend = DemoBackend(tmp_path, port, api_key)
        return backend.start() if start else backend

    def cleanup(backend: DemoBackend) -> None:
        if backend.up():
            backend.kill(signal.SIGKILL)

    yield from factory(build, cleanup)


@pytest.fixture
def publish_factory(tmp_path: Path, hub: Hub) -> Iterator[Callable[..., Any]]:
    from tests.support.procs import Publish

    def build(backends: list[dict[str, Any]], hub_url: str | None = None, **top: Any) -> Any:
        return Publish(tmp_path, hub_url or hub.url, backends, **top).start()

    yield from factory(build, Publish.stop)


@pytest.fixture
def publishing(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`tether publish` processes on any hub: `publishing(hub_url, backends, **top)`
    (publish_factory starts a hub of its own first)."""
    from tests.support.procs import Publish

    def build(hub_url: str, backends: list[dict[str, Any]], **top: Any) -> Any:
        return Publish(tmp_path, hub_url, backends, **top).start()

    yield from factory(build, Publish.stop)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[RawServer, Peer], None]], RawServer]]:
    """Raw-socket servers, each running `handler(server, peer)` per connection; closed
    after the test."""
    def build(handler: Callable[[RawServer, Peer], None]) -> RawServer:
        server = RawServer(lambda peer: handler(server, peer))
        return server

    yield from factory(build, RawServer.close)
