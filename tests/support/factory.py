"""The body of a factory fixture: what a test makes through it is cleaned up after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def factory(build: Callable[..., T], cleanup: Callable[[T], object]) -> Iterator[Callable[..., T]]:
    """`yield from factory(build, cleanup)` in a fixture: the test gets a `make` that calls
    `build` and keeps what it returned; once the test is over, `cleanup` runs on each."""
    made: list[T] = []

    def make(*args: Any, **kwargs: Any) -> T:
        made.append(build(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        cleanup(thing)
