"""The store on its own: atomic registration, guarded writes, the sweep queries — on SQLite
and on PostgreSQL (the `database_url` fixture runs each test on both)."""

from __future__ import annotations

import datetime as dt

import pytest

from tether.errors import TetherError
from tether.store import db, migrations
from tether.store import llms as store
from tether.store.models import Llm, utcnow


@pytest.fixture(autouse=True)
def database(database_url):
    db.init(database_url)
    migrations.migrate()
    yield database_url
    db.close()


sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def spec(name: str, **kw) -> dict:
    return {"name": name, "type": "openai", "model": "m", **kw}


@sqlite_only
def test_sqlite_runs_in_wal_mode(tmp_path):
    with db.connection() as conn:
        assert conn.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrate_is_idempotent_and_records_the_version():
    assert migrations.migrate() == migrations.CURRENT_VERSION


def test_register_rolls_back_everything_on_a_conflict():
    store.register("s1", [spec("a")])
    with pytest.raises(TetherError) as conflict:
        store.register("s2", [spec("b"), spec("a")])
    assert conflict.value.code == "llm_owned_by_other_session"
    assert store.get("b") is None


def test_status_writes_are_guarded_by_the_owning_session():
    store.register("s1", [spec("a")])
    assert store.set_status("a", "s1", "inactive")
    store.register("s2", [spec("a")])  # s2 takes the inactive row
    assert not store.set_status("a", "s1", "inactive")  # a stale writer changes nothing
    assert store.get("a").status == "active"


def test_sweep_queries():
    store.register("s1", [spec("old"), spec("new")])
    past = utcnow() - dt.timedelta(hours=1)
    with db.connection():
        Llm.update(last_heartbeat_at=past).where(Llm.name == "old").execute()
    cutoff = utcnow() - dt.timedelta(minutes=1)
    assert store.stale_names(cutoff) == ["old"]
    assert store.mark_inactive_if_stale("old", "s1", cutoff)
    assert not store.mark_inactive_if_stale("new", "s1", cutoff)
    assert store.delete_expired(utcnow() - dt.timedelta(minutes=1)) == []
    gone = store.delete_expired(utcnow() + dt.timedelta(seconds=1))
    assert [r.name for r in gone] == ["old"]
    assert [r.name for r in store.list_all()] == ["new"]


def test_startup_deactivates_every_virtual_row():
    store.register("s1", [spec("a"), spec("b", initialStatus="hibernating")])
    assert store.deactivate_all_virtual() == 2
    assert {r.status for r in store.list_all()} == {"inactive"}


@sqlite_only
def test_a_version_1_database_is_migrated_in_place(tmp_path):
    """A hub from before keys existed: its rows survive and the key tables appear."""
    import sqlite3

    db.close()
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE llm (id VARCHAR(36) PRIMARY KEY, name VARCHAR(128) UNIQUE NOT NULL,
              type VARCHAR(64) NOT NULL, model VARCHAR(256) NOT NULL, tier VARCHAR(64) NOT NULL,
              description TEXT NOT NULL, extra_config TEXT NOT NULL, kind VARCHAR(16) NOT NULL,
              provider_session_id VARCHAR(128), status VARCHAR(16) NOT NULL,
              last_heartbeat_at DATETIME, inactive_since DATETIME, created_at DATETIME NOT NULL,
              updated_at DATETIME NOT NULL);
            CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
            INSERT INTO schema_version (version) VALUES (1);
            INSERT INTO llm VALUES ('id-1', 'kept', 'openai', 'm', 'fast', '', '{}', 'virtual',
              's1', 'inactive', NULL, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00');
        """)
    db.init(f"sqlite:///{path}")
    assert migrations.migrate() == 1
    assert store.get("kept").provider_session_id == "s1"
    from tether.store import keys

    key = keys.create("k", "client")
    assert keys.verify(key).name == "k"
    assert migrations.migrate() == migrations.CURRENT_VERSION == 2


def test_keys_and_session_owners(database):
    from tether.store import keys

    key = keys.create("k", "client")
    with pytest.raises(ValueError):
        keys.create("k", "admin")
    assert keys.verify(key) == keys.Caller("k", "client")
    assert keys.claim_session("s1", "k") == "k"
    assert keys.claim_session("s1", "other") == "k"  # the first claim stays
    assert keys.revoke("k") and not keys.revoke("k")
    assert keys.verify(key) is None
    assert [row["name"] for row in keys.list_keys()] == ["k"]


def test_public_rows_sync_and_timestamps_round_trip(database):
    from types import SimpleNamespace

    llm = SimpleNamespace(name="cloud", type="openai", model="m", tier="slow",
                          description="d", extra_config={"a": [1, 2]})
    assert store.sync_public([llm]) == (1, 0)
    row = store.get("cloud")
    assert (row.kind, row.extra_config, row.tier) == ("public", {"a": [1, 2]}, "slow")
    assert store.sync_public([]) == (0, 1)
    store.register("s1", [spec("a")])
    wire = store.get("a").to_wire()
    assert wire["lastHeartbeatAt"].endswith("Z") and wire["inactiveSince"] is None
