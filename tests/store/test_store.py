"""The store on its own: atomic registration, guarded writes, the sweep queries — on SQLite
and on PostgreSQL (the `database_url` fixture runs each test on both)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import threading

import pytest

from tether.errors import TetherError
from tether.store import db, migrations
from tether.store import llms as store
from tether.store.models import LlmMember, utcnow

pytestmark = pytest.mark.usefixtures("database")


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


def test_register_returns_what_the_store_reads_back():
    """A registration derives its rows in memory (no read back): they must be what a read
    gives, for a new name, a re-registration, a pool join and a name taken over."""

    def check(done: store.Registered) -> None:
        for row in done.rows:
            assert row.to_wire() == store.get(row.name).to_wire()
            read = store.members_of([row.name])[row.name]
            assert [(x.id, x.to_wire()) for x in done.members[row.name]] == [
                (x.id, x.to_wire()) for x in read]

    check(store.register("s1", [spec("a", tier="slow", extraConfig={"k": [1]}),
                                spec("p", pool=True, initialStatus="hibernating")]))
    check(store.register("s1", [spec("a", model="m2"), spec("p", pool=True)]))
    check(store.register("s2", [spec("p", pool=True, model="m3")]))
    store.set_status("a", "s1", "inactive")
    check(store.register("s3", [spec("a")]))


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
        LlmMember.update(last_heartbeat_at=past).where(LlmMember.llm_name == "old").execute()
    cutoff = utcnow() - dt.timedelta(minutes=1)
    assert store.stale_names(cutoff) == ["old"]
    assert store.mark_inactive_if_stale("old", "s1", cutoff)
    assert not store.mark_inactive_if_stale("new", "s1", cutoff)
    assert store.get("old").status == "inactive"  # the row follows its member
    assert store.delete_expired(utcnow() - dt.timedelta(minutes=1)) == []
    assert store.delete_expired(utcnow() + dt.timedelta(seconds=1)) == ["old"]
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
    # Version 3: the published row got its one member, from its own fields.
    [member] = store.members_of(["kept"])["kept"]
    assert (member.session_id, member.status, member.pool) == ("s1", "inactive", False)
    assert store.register("s2", [spec("kept")]).rows[0].provider_session_id == "s2"
    assert [x.session_id for x in store.members_of(["kept"])["kept"]] == ["s2"]
    from tether.store import keys

    key = keys.create("k", "client")
    assert keys.verify(key).name == "k"
    assert keys.verify(key).llms is None  # version 4: a key from before is unscoped
    assert migrations.migrate() == migrations.CURRENT_VERSION == 5


def test_a_version_3_database_gains_key_scopes_and_usage(database):
    """Version 4 adds api_key.llms to a database of version 3, on SQLite and PostgreSQL:
    its keys stay unscoped, and scopes can be set; version 5 adds the usage buckets."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as apply

    from tether.store import keys, usage
    from tether.store.models import SchemaVersion, UsageBucket, utcnow

    old = keys.create("old", "client")
    with db.connection() as conn, conn.atomic():
        apply(SchemaMigrator.from_database(db.database.obj).drop_column("api_key", "llms"))
        conn.drop_tables([UsageBucket])
        SchemaVersion.update(version=3).execute()
    assert migrations.migrate() == 3
    bucket = usage.Bucket(usage.hour_of(utcnow()), "old", "llama")
    usage.add({bucket: usage.Counts(1, 2, 3)})
    assert usage.totals()[0]["completionTokens"] == 3
    assert keys.verify(old) == keys.Caller("old", "client", None)
    assert keys.set_llms("old", ["b", "a"])
    assert keys.verify(old) == keys.Caller("old", "client", frozenset({"a", "b"}))
    assert migrations.migrate() == migrations.CURRENT_VERSION


def test_key_scopes(database):
    from tether.store import keys

    friend = keys.create("friend", "client", ["llama3", "assistant", "llama3"])
    assert keys.verify(friend).llms == frozenset({"llama3", "assistant"})
    assert [(k["name"], k["llms"]) for k in keys.list_keys()] == [
        ("friend", ["assistant", "llama3"])]
    for bad in (["ok", "no/slash"], ["_reserved"], [""], []):
        with pytest.raises(ValueError):
            keys.create("bad", "client", bad)
        with pytest.raises(ValueError):
            keys.set_llms("friend", bad)
    with pytest.raises(ValueError, match="client keys only"):
        keys.create("pub", "publisher", ["llama3"])
    assert keys.set_llms("friend", None) and keys.verify(friend).llms is None
    assert not keys.set_llms("nobody", ["x"])
    assert keys.revoke("friend") and not keys.set_llms("friend", ["x"])
    assert [k["name"] for k in keys.list_keys()] == ["friend"]  # the refusals made nothing


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


# --- pools (docs/protocol.md, Pools) ------------------------------------------------------------


def test_pool_members_join_and_the_row_is_derived_from_them():
    store.register("s1", [spec("p", pool=True, model="m1", maxConcurrency=2,
                               initialStatus="hibernating")])
    store.register("s2", [spec("p", pool=True, model="m2")])
    row = store.get("p")
    assert (row.status, row.provider_session_id, row.model) == ("active", "s1", "m1")
    members = store.members_of(["p"])["p"]
    assert [(x.session_id, x.model, x.status, x.max_concurrency) for x in members] == [
        ("s1", "m1", "hibernating", 2), ("s2", "m2", "active", None)]
    assert store.set_status("p", "s2", "inactive")
    assert store.get("p").status == "hibernating" and store.get("p").inactive_since is None
    assert store.set_status("p", "s1", "inactive")
    row = store.get("p")
    assert row.status == "inactive" and row.inactive_since is not None
    assert row.last_heartbeat_at == max(x.last_heartbeat_at for x in store.members_of(["p"])["p"])


def test_a_pool_needs_pool_true_on_every_live_member():
    store.register("s1", [spec("p")])  # no pool: true
    with pytest.raises(TetherError) as refused:
        store.register("s2", [spec("q"), spec("p", pool=True)])
    assert (refused.value.code, refused.value.param) == (
        "llm_owned_by_other_session", "providers[1].name")
    store.register("s3", [spec("r", pool=True)])
    with pytest.raises(TetherError):
        store.register("s4", [spec("r")])  # joining without pool: true
    assert store.get("q") is None  # nothing of a refused request is applied


def test_inactive_members_never_block_and_go_when_they_cannot_share():
    store.register("s1", [spec("p", pool=True)])
    store.register("s2", [spec("p", pool=True)])
    store.set_status("p", "s1", "inactive")
    with pytest.raises(TetherError):
        store.register("s3", [spec("p")])  # s2 lives: no taking the name alone
    store.set_status("p", "s2", "inactive")
    store.register("s3", [spec("p")])  # takes it alone: every inactive member goes
    assert [x.session_id for x in store.members_of(["p"])["p"]] == ["s3"]
    assert store.get("p").provider_session_id == "s3"


def test_a_publisher_key_holds_at_most_max_llms_names_all_or_nothing():
    alice = store.Registrant("alice", max_llms=3)
    store.register("s1", [spec("a"), spec("b")], alice)
    store.register("s2", [spec("c")], alice)  # another session of the same key counts too
    with pytest.raises(TetherError) as refused:
        store.register("s1", [spec("d"), spec("e")], alice)
    assert (refused.value.status, refused.value.code) == (409, "too_many_llms")
    assert store.get("d") is None and store.get("e") is None  # rolled back, whole
    store.set_status("c", "s2", "inactive")  # an inactive name still holds its row
    with pytest.raises(TetherError):
        store.register("s1", [spec("d")], alice)
    store.register("s1", [spec("a"), spec("b"), spec("c")], alice)  # re-registering: same 3
    # Another key, an admin key and auth off (no key) are not alice's names.
    store.register("s3", [spec("x")], store.Registrant("bob", max_llms=3))
    store.register("s4", [spec(f"r{i}") for i in range(5)],
                   store.Registrant("root", admin=True, max_llms=3))
    store.register("s5", [spec(f"n{i}") for i in range(5)], store.Registrant(max_llms=3))


def test_pool_keys_one_publisher_key_per_pool_and_admin_fits_any():
    alice, bob = store.Registrant("alice"), store.Registrant("bob")
    store.register("s1", [spec("p", pool=True)], alice)
    with pytest.raises(TetherError) as refused:
        store.register("s2", [spec("p", pool=True)], bob)
    assert refused.value.code == "llm_owned_by_other_session"
    store.register("s2", [spec("p", pool=True)], alice)
    store.register("s3", [spec("p", pool=True)], store.Registrant("root", admin=True))
    store.register("s4", [spec("q", pool=True)], store.Registrant("root", admin=True))
    store.register("s5", [spec("q", pool=True)], bob)  # an admin's member fits any key
    # An inactive member of another key is removed by a pool register, not kept.
    store.set_status("p", "s1", "inactive")
    store.set_status("p", "s2", "inactive")
    store.set_status("p", "s3", "inactive")
    store.register("s6", [spec("p", pool=True)], bob)
    assert [x.session_id for x in store.members_of(["p"])["p"]] == ["s3", "s6"]


def test_the_name_goes_with_its_last_member():
    store.register("s1", [spec("p", pool=True)])
    store.register("s2", [spec("p", pool=True)])
    store.set_status("p", "s1", "inactive")
    assert store.delete_expired(utcnow() + dt.timedelta(seconds=1)) == ["p"]
    assert store.get("p").provider_session_id == "s2"
    store.set_status("p", "s2", "inactive")
    assert store.delete_expired(utcnow() + dt.timedelta(seconds=1)) == ["p"]
    assert store.get("p") is None and store.members_of(["p"]) == {"p": []}


postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@postgres_only
def test_two_members_registering_a_new_pool_name_at_once_both_join(monkeypatch):
    """Both read "no such name" and both insert it: the second used to fail with a
    UniqueViolation (500 to its publisher); it now registers again, and joins the pool."""
    both_read = threading.Barrier(2, timeout=10)
    real = store.members_of

    def members_of(names):
        found = real(names)
        if not all(found.values()):  # a first attempt: the name is not there yet
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait()
        return found

    monkeypatch.setattr(store, "members_of", members_of)
    with cf.ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda s: store.register(s, [spec("shared", pool=True)]),
                             ["s1", "s2"]))
    assert both_read.n_waiting == 0 and not both_read.broken
    assert {x.session_id for x in store.members_of(["shared"])["shared"]} == {"s1", "s2"}
    assert all(d.rows[0].name == "shared" for d in done)


@postgres_only
def test_groups_writing_the_same_new_names_in_opposite_orders_both_commit(monkeypatch):
    """Group commit made transactions longer: two hub processes' groups inserting the same
    new names in opposite orders each waited for the other's uncommitted row, and
    PostgreSQL aborted one group (a deadlock: 503 for all of it). Each group now locks its
    names first, in one order (tether/store/name_locks.py): the second waits for the first."""
    first_written = threading.Barrier(2, timeout=3)
    real = store.register

    def register(session_id, providers, who):
        done = real(session_id, providers, who)
        if session_id in ("s1", "s3"):  # each group's first: wait until both wrote one name
            with contextlib.suppress(threading.BrokenBarrierError):
                first_written.wait()  # with the locks, the other group waits: broken
        return done

    monkeypatch.setattr(store, "register", register)
    who = store.Registrant()
    groups = [[("s1", [spec("x", pool=True)], who), ("s2", [spec("y", pool=True)], who)],
              [("s3", [spec("y", pool=True)], who), ("s4", [spec("x", pool=True)], who)]]
    with cf.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(store.register_many, groups))
    assert [[type(x).__name__ for x in o] for o in outcomes] == [["Registered"] * 2] * 2
    assert {x.session_id for x in store.members_of(["x"])["x"]} == {"s1", "s4"}
    assert {x.session_id for x in store.members_of(["y"])["y"]} == {"s2", "s3"}


def test_registrations_written_together_refuse_only_their_own(monkeypatch):
    """Group commit (issue 26, part 4): one transaction for the group, one commit, a
    savepoint each. A refused registration rolls back its own writes only; a later one sees
    an earlier one's writes, as if they had run one after the other."""
    store.register("s0", [spec("taken")])
    real_commit, commits = db.database.obj.commit, []
    monkeypatch.setattr(db.database.obj, "commit", lambda: commits.append(1) or real_commit())
    who = store.Registrant()
    outcomes = store.register_many([
        ("s1", [spec("a")], who),
        ("s2", [spec("b"), spec("taken")], who),  # refused: its "b" must not stay
        ("s3", [spec("c")], who),
        ("s4", [spec("a")], who),  # s1's, written just before in the same transaction
    ])
    assert len(commits) == 1
    assert [type(x).__name__ for x in outcomes] == [
        "Registered", "TetherError", "Registered", "TetherError"]
    assert outcomes[1].code == outcomes[3].code == "llm_owned_by_other_session"
    assert [outcomes[0].rows[0].name, outcomes[2].rows[0].name] == ["a", "c"]
    assert store.get("b") is None
    assert store.get("a").provider_session_id == "s1"
    assert [x.session_id for x in store.members_of(["c"])["c"]] == ["s3"]
