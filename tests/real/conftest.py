"""Fixtures for tests against llama.cpp's server (llama-cpp-python), behind a real hub and a
real `tether publish`, with the official `openai` SDK as the client. Nothing here skips:
llama-cpp-python and gguf are in the test extra, and the model is written at test time."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub import free_port, wait_until
from tests.support.llama import LlamaServer, server_command, write_model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model: fast (about 1,500 tokens/s)."""
    return write_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider one (about 100 tokens/s): a stream that lasts seconds."""
    return write_model(tmp_path_factory.mktemp("models") / "slow.gguf", embed=512, layers=4)


@pytest.fixture
def llama_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[LlamaServer] = []

    def build(model: Path, *extra: str) -> LlamaServer:
        server = LlamaServer(model, tmp_path / f"llama-{len(servers)}.log", None, *extra)
        servers.append(server)
        return server.start()

    yield build
    for server in servers:
        server.stop()


@pytest.fixture
def llama(llama_factory: Any, model: Path) -> LlamaServer:
    """llama.cpp's server on the tiny model, started by the test (not by a recipe)."""
    return llama_factory(model)


class Recipe:
    """A wake recipe that runs llama.cpp's server in the foreground on `port`: it writes its
    pid (the server's, after exec) and counts its runs, so the test can kill what a
    publisher started and tell how many wakes there were."""

    def __init__(self, tmp: Path, model: Path, *extra: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.pidfile = tmp / f"llama-{self.port}.pid"
        self.runs = tmp / f"llama-{self.port}.runs"
        self.server = server_command(model, self.port, *extra)

    def command(self) -> list[str]:
        code = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
                "open(sys.argv[2], 'a').write('run\\n'); os.execv(sys.argv[3], sys.argv[3:])")
        return [sys.executable, "-c", code, str(self.pidfile), str(self.runs), *self.server]

    def background(self) -> list[str]:
        """The same server started in the background by a shell that exits at once."""
        return ["sh", "-c", '"$@" &', "sh", *self.command()]

    def stop_command(self) -> list[str]:
        return ["sh", "-c", f'kill "$(cat {self.pidfile})"']

    def wakes(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of ours is dead too
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


@pytest.fixture
def recipe_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Recipe] = []

    def build(model: Path, *extra: str) -> Recipe:
        made.append(Recipe(tmp_path, model, *extra))
        return made[-1]

    yield build
    for recipe in made:  # a server a publisher started outlives it: stop it here
        recipe.kill()
