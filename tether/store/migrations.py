"""Schema creation and migrations, applied at startup.

Version 1 is the schema the models describe. Later changes append a function to MIGRATIONS
that uses playhouse.migrate; a database at version N runs every migration after N, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee

from tether.store.db import connection
from tether.store.models import ALL_MODELS, ApiKey, SchemaVersion, SessionOwner


def _v2_keys_and_session_owners(db: peewee.Database) -> None:
    """Version 2: bearer keys and the owner key of each provider session."""
    db.create_tables([ApiKey, SessionOwner], safe=True)


# MIGRATIONS[i] takes the schema from version i + 1 to version i + 2.
MIGRATIONS: list[Callable[[peewee.Database], None]] = [_v2_keys_and_session_owners]
CURRENT_VERSION = 1 + len(MIGRATIONS)


def migrate() -> int:
    """Bring the database to CURRENT_VERSION; returns the version it started at (0: new)."""
    with connection() as db, db.atomic():
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
