"""Registrations take their names' locks first, in one order (PostgreSQL only).

Group commit (tether/actors/group_commit.py) writes many registrations in one transaction.
Two hub processes' groups that inserted the same new names in opposite orders each waited
for the other's uncommitted row, and PostgreSQL aborted one of them: a deadlock, its whole
group answered 503. Taken in one order before any write, the second group waits for the
first instead. SQLite has one writer at a time and needs none of this.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

# The first key of the two-key advisory locks: apart from the migrations' one-key lock
# (tether/store/migrations.py), and from other applications' locks on a shared server.
NAME_LOCK_SPACE = 0x7E7E0426


def lock_names(db: Any, names: Iterable[str]) -> None:
    """Lock each name for the rest of the transaction, in the order of their keys (sorted
    here: unnest yields an array's elements in order, one lock per row)."""
    keys = sorted({zlib.crc32(name.encode()) - 2**31 for name in names})  # int4 range
    db.execute_sql("SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int4[]) AS k",
                   (NAME_LOCK_SPACE, keys))
