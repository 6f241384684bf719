"""Schema creation and migrations, applied at startup.

Version 1 is the schema the models describe. Later changes append a function to MIGRATIONS
that uses playhouse.migrate; a database at version N runs every migration after N, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as apply

from tether.store.db import connection, database
from tether.store.models import (
    ALL_MODELS,
    KIND_VIRTUAL,
    ApiKey,
    Llm,
    LlmMember,
    SchemaVersion,
    SessionOwner,
    UsageBucket,
)


def _v2_keys_and_session_owners(db: peewee.DatabaseProxy) -> None:
    """Version 2: bearer keys and the owner key of each provider session."""
    db.create_tables([ApiKey, SessionOwner], safe=True)


def _v3_pool_members(db: peewee.DatabaseProxy) -> None:
    """Version 3: pool members. Each published row gets its one member, from its own
    fields, so a database from before pools serves exactly as it did."""
    db.create_tables([LlmMember], safe=True)
    owners = {o.session_id: o.key_name for o in SessionOwner.select()}
    for row in Llm.select().where(Llm.kind == KIND_VIRTUAL, Llm.provider_session_id.is_null(False)):
        session_id = row.provider_session_id
        assert session_id is not None  # the query's condition
        LlmMember.create(
            llm_name=row.name, session_id=session_id, model=row.model,
            status=row.status, key_name=owners.get(session_id),
            last_heartbeat_at=row.last_heartbeat_at, inactive_since=row.inactive_since,
            created_at=row.created_at,
        )


def _v4_key_scopes(db: peewee.DatabaseProxy) -> None:
    """Version 4: a client key may be limited to some Llms (NULL: every Llm, as before).
    A database from before version 2 got the column with its table (made from the model)."""
    table = ApiKey._meta.table_name
    if any(column.name == "llms" for column in db.get_columns(table)):
        return
    migrator = SchemaMigrator.from_database(database.obj)
    apply(migrator.add_column(table, "llms", peewee.TextField(null=True)))


def _v5_usage(db: peewee.DatabaseProxy) -> None:
    """Version 5: hourly usage buckets per client key and Llm."""
    db.create_tables([UsageBucket], safe=True)


# MIGRATIONS[i] takes the schema from version i + 1 to version i + 2.
MIGRATIONS: list[Callable[[peewee.DatabaseProxy], None]] = [
    _v2_keys_and_session_owners, _v3_pool_members, _v4_key_scopes,
    _v5_usage]
CURRENT_VERSION = 1 + len(MIGRATIONS)


# pg_advisory_xact_lock's key for migrations: any fixed 64-bit number other applications on
# the same database are unlikely to use (the first 8 bytes of sha256("tether.migrations")).
MIGRATION_LOCK = 0x4F5C89467B4B8106


def migrate() -> int:
    """Bring the database to CURRENT_VERSION; returns the version it started at (0: new).

    Hub processes starting together (`--workers N`, several hosts) migrate one at a time: on
    PostgreSQL each holds an advisory lock for its transaction, so the next one sees the
    tables the first made instead of failing on them (SQLite serves one process)."""
    with connection() as db, db.atomic():
        if isinstance(database.obj, peewee.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        fresh = not db.table_exists(SchemaVersion._meta.table_name)
        if fresh:
            db.create_tables(ALL_MODELS, safe=True)
            SchemaVersion.create(version=CURRENT_VERSION)
            return 0
        row = SchemaVersion.select().first()
        start = row.version if row else CURRENT_VERSION
        for step in MIGRATIONS[start - 1 :]:
            step(db)
        SchemaVersion.update(version=CURRENT_VERSION).execute()
        return start
