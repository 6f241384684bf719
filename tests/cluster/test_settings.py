"""What several processes need, checked before anything starts: `tether serve` exits 2 with
one line naming what is missing (docs/protocol.md, Several hub processes)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.hub import free_port
from tests.support.procs import TETHER

POSTGRES = "postgresql://tether:s3cret@db.invalid:5432/tether"


def serve(tmp_path, *flags: str, env: dict[str, str] | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run([*TETHER, "serve", "--port", str(free_port()), *flags],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={**clean, **(env or {})})


@pytest.mark.parametrize("flags, env, needs, not_needed", [
    # SQLite is one process's file, and several workers without a bus would each hold their
    # own publishers.
    (["--workers", "2"], {}, ["a PostgreSQL database_url", "a bus_url"], []),
    (["--bus-url", "redis://127.0.0.1:6379/0"], {},
     ["a PostgreSQL database_url"], ["needs a bus_url"]),
    (["--workers", "2", "--database-url", POSTGRES], {},
     ["a bus_url"], ["a PostgreSQL database_url"]),
    # The same from the environment, as a deployment sets it.
    ([], {"TETHER_WORKERS": "3", "TETHER_DATABASE_URL": POSTGRES}, ["a bus_url"], []),
])
def test_several_processes_without_their_services_exit_2_naming_what_is_missing(
        tmp_path, flags, env, needs, not_needed):
    done = serve(tmp_path, *flags, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tether serve: ")
    for wanted in needs:
        assert wanted in lines[0]
    for unwanted in not_needed:
        assert unwanted not in lines[0]
    assert "s3cret" not in lines[0]  # the database URL is named without its password
    assert not (tmp_path / "tether.db").exists()  # refused before any database was opened


@pytest.mark.parametrize("flags, needle", [
    (["--workers", "0"], "--workers: setting 'workers': must be a whole number >= 1"),
    (["--bus-url", "http://127.0.0.1:6379"], "--bus-url: setting 'bus_url': must be a redis://"),
])
def test_unusable_scale_out_settings_exit_2_naming_the_flag(tmp_path, flags, needle):
    done = serve(tmp_path, *flags)
    assert done.returncode == 2
    assert needle in done.stderr
