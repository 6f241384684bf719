from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.factory import factory
from tether.actors.system import ActorSystem
from tether.config import Settings


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., ActorSystem]]:
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
