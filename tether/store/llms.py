"""Every query on Llm rows. Actors call these; nothing else writes rows.

Status writes are conditional on the owning session, so a write from an actor that has not
yet heard of a newer registration cannot undo it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from tether.errors import TetherError
from tether.store.db import connection
from tether.store.models import (
    ACTIVE,
    INACTIVE,
    KIND_PUBLIC,
    KIND_VIRTUAL,
    Llm,
    utcnow,
)


def get(name: str) -> Llm | None:
    with connection():
        return Llm.get_or_none(Llm.name == name)


def list_all() -> list[Llm]:
    with connection():
        return list(Llm.select().order_by(Llm.name))


def register(session_id: str, providers: Sequence[dict[str, Any]]) -> list[Llm]:
    """Apply a registration atomically: every provider is accepted or none (PROTOCOL.md)."""
    now = utcnow()
    rows: list[Llm] = []
    with connection() as db, db.atomic():
        existing = {
            row.name: row
            for row in Llm.select().where(Llm.name.in_([p["name"] for p in providers]))
        }
        for index, spec in enumerate(providers):
            row = existing.get(spec["name"])
            status = spec.get("initialStatus", ACTIVE)
            if row is None:
                row = Llm(
                    name=spec["name"],
                    type=spec["type"],
                    model=spec["model"],
                    tier=spec.get("tier", "fast"),
                    description=spec.get("description", ""),
                    extra_config=spec.get("extraConfig", {}),
                    kind=KIND_VIRTUAL,
                )
            elif row.kind == KIND_PUBLIC:
                raise TetherError(
                    409, "public_llm_conflict", f"{row.name!r} is a public Llm of this hub"
                )
            elif row.provider_session_id != session_id and row.status != INACTIVE:
                raise TetherError(
                    409,
                    "llm_owned_by_other_session",
                    f"{row.name!r} is {row.status} under another publisher session",
                    f"providers[{index}].name",  # so the publisher can register the rest
                )
            else:
                row.type = spec["type"]
                row.model = spec["model"]
                for wire, field in (
                    ("tier", "tier"),
                    ("description", "description"),
                    ("extraConfig", "extra_config"),
                ):
                    if wire in spec:
                        setattr(row, field, spec[wire])
            row.provider_session_id = session_id
            row.status = status
            row.last_heartbeat_at = now
            row.inactive_since = None
            row.updated_at = now
            row.save(force_insert=row.name not in existing)
            rows.append(row)
    return rows


def bump_heartbeat(name: str, session_id: str) -> bool:
    """The LlmActor's heartbeat write; False if the row is no longer the session's."""
    with connection():
        now = utcnow()
        return bool(
            Llm.update(last_heartbeat_at=now, updated_at=now)
            .where(Llm.name == name, Llm.provider_session_id == session_id,
                   Llm.kind == KIND_VIRTUAL)
            .execute()
        )


def set_status(name: str, session_id: str | None, status: str) -> bool:
    """Write `status` for a row still owned by `session_id`; False if ownership moved."""
    now = utcnow()
    fields: dict[Any, Any] = {Llm.status: status, Llm.updated_at: now}
    if status == INACTIVE:
        fields[Llm.inactive_since] = now
    else:
        fields[Llm.inactive_since] = None
        fields[Llm.last_heartbeat_at] = now
    with connection():
        return bool(
            Llm.update(fields)
            .where(Llm.name == name, Llm.provider_session_id == session_id)
            .execute()
        )


def mark_inactive_if_stale(name: str, session_id: str | None, cutoff: dt.datetime) -> bool:
    """The sweep's write: only if the row is still stale and still owned by the session."""
    now = utcnow()
    with connection():
        return bool(
            Llm.update(status=INACTIVE, inactive_since=now, updated_at=now)
            .where(
                Llm.name == name,
                Llm.provider_session_id == session_id,
                Llm.kind == KIND_VIRTUAL,
                Llm.status != INACTIVE,
                Llm.last_heartbeat_at < cutoff,
            )
            .execute()
        )


def stale_names(cutoff: dt.datetime) -> list[str]:
    with connection():
        query = Llm.select(Llm.name).where(
            Llm.kind == KIND_VIRTUAL, Llm.status != INACTIVE, Llm.last_heartbeat_at < cutoff
        )
        return [row.name for row in query]


def delete_expired(cutoff: dt.datetime) -> list[Llm]:
    """Delete inactive virtual rows inactive since before `cutoff`; returns what went."""
    with connection() as db, db.atomic():
        doomed = list(
            Llm.select().where(
                Llm.kind == KIND_VIRTUAL, Llm.status == INACTIVE, Llm.inactive_since < cutoff
            )
        )
        if doomed:
            Llm.delete().where(Llm.id.in_([row.id for row in doomed])).execute()
        return doomed


def deactivate_all_virtual() -> int:
    """At startup no stream can be live yet: every virtual row is inactive until re-taken."""
    now = utcnow()
    with connection():
        return (
            Llm.update(status=INACTIVE, inactive_since=now, updated_at=now)
            .where(Llm.kind == KIND_VIRTUAL, Llm.status != INACTIVE)
            .execute()
        )


def sync_public(llms: Sequence[Any]) -> tuple[int, int]:
    """Make the public rows match the hub's config: create, update, and delete the ones
    no longer declared. A declared name takes over a virtual row of the same name."""
    now = utcnow()
    with connection() as db, db.atomic():
        existing = {row.name: row for row in Llm.select().where(
            Llm.name.in_([llm.name for llm in llms]))} if llms else {}
        for llm in llms:
            row = existing.get(llm.name) or Llm(name=llm.name, created_at=now)
            row.type, row.model, row.tier = llm.type, llm.model, llm.tier
            row.description, row.extra_config = llm.description, llm.extra_config
            row.kind, row.status, row.provider_session_id = KIND_PUBLIC, ACTIVE, None
            row.last_heartbeat_at, row.inactive_since, row.updated_at = None, None, now
            row.save(force_insert=llm.name not in existing)
        removed = (Llm.delete()
                   .where(Llm.kind == KIND_PUBLIC, Llm.name.not_in([x.name for x in llms]))
                   .execute())
    return len(llms), removed
