"""Every query on Llm rows. Actors call these; nothing else writes rows.

Status writes are per member (docs/protocol.md, Pools) and conditional on the member still
existing, so a write from an actor that has not yet heard of a newer registration cannot
undo it; each re-derives the Llm row's own status, owner, model and times in the same
transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from tether import errors
from tether.store.db import connection, database
from tether.store.models import (
    ACTIVE,
    INACTIVE,
    KIND_PUBLIC,
    KIND_VIRTUAL,
    Llm,
    LlmMember,
    derived_status,
    utcnow,
)
from tether.store.name_locks import lock_names
from tether.store.prepared import Arg, Prepared, each, fields_of

# What a registration writes of its member; the rest of the row is set once, on insert.
_REGISTERED = (LlmMember.model, LlmMember.status, LlmMember.pool, LlmMember.max_concurrency,
               LlmMember.key_name, LlmMember.by_admin, LlmMember.last_heartbeat_at,
               LlmMember.inactive_since)

# The statements of a registration and of re-deriving a row: their SQL is rendered once
# (prepared.py), which halved the cost of a registration.
_LLMS_NAMED = Prepared(lambda n: Llm.select().where(Llm.name.in_(each("names", Llm.name, n))))
_MEMBERS_OF = Prepared(lambda n: (
    LlmMember.select().where(LlmMember.llm_name.in_(each("names", LlmMember.llm_name, n)))
    .order_by(LlmMember.created_at, LlmMember.id)))
_INSERT_LLM = Prepared(lambda: Llm.insert(fields_of(Llm)))
_UPDATE_LLM = Prepared(lambda: Llm.update(fields_of(Llm, Llm.id))
                       .where(Llm.id == Arg("id", Llm.id)))
_INSERT_MEMBER = Prepared(lambda: LlmMember.insert(fields_of(LlmMember, LlmMember.id)))
_UPDATE_MEMBER = Prepared(lambda: LlmMember.update({f: Arg(f.name, f) for f in _REGISTERED})
                          .where(LlmMember.id == Arg("id", LlmMember.id)))


def get(name: str) -> Llm | None:
    with connection():
        rows = _LLMS_NAMED.select(Llm, {"names": [name]}, 1)
    return rows[0] if rows else None


def list_all() -> list[Llm]:
    with connection():
        return list(Llm.select().order_by(Llm.name))


def members_of(names: Sequence[str]) -> dict[str, list[LlmMember]]:
    """Each name's members, oldest first (the Llm's providerSessionId and model are its
    oldest member's)."""
    out: dict[str, list[LlmMember]] = {name: [] for name in names}
    if not names:
        return out
    with connection():
        for member in _MEMBERS_OF.select(LlmMember, {"names": names}, len(names)):
            out[member.llm_name].append(member)
    return out


@dataclass(frozen=True)
class Registrant:
    """Who registers (with auth on): the key's name and whether it is an admin key."""

    key_name: str | None = None
    admin: bool = False
    # How many Llm names a (non-admin) publisher key may hold, inactive ones included: each
    # is a row every read of the list carries (setting max_llms_per_key).
    max_llms: int | None = None


def _compatible(member: LlmMember, who: Registrant) -> bool:
    """The pool-join key rule: one publisher key per pool; admin keys fit any."""
    return (who.key_name is None or who.admin or member.by_admin
            or member.key_name is None or member.key_name == who.key_name)


@dataclass(frozen=True)
class Registered:
    """What a registration wrote: each provider's Llm row, in request order, and each name's
    members, oldest first, as `members_of` would read them back."""

    rows: list[Llm]
    members: dict[str, list[LlmMember]]


# How often a registration is tried again when another process inserted one of its names
# (or members) between its read and its write.
REGISTER_TRIES = 3


def register(session_id: str, providers: Sequence[dict[str, Any]],
             who: Registrant = Registrant()) -> Registered:
    """Apply a registration atomically: every provider is accepted or none (docs/protocol.md,
    Register and Pools). Two pool members registering a new name at once (two hub
    processes) both read "no such name" and both insert it: the second insert fails on the
    name's uniqueness, its transaction (or savepoint) rolls back, and it is tried again,
    when it finds the row and joins."""
    for attempt in range(REGISTER_TRIES):
        try:
            return _register(session_id, providers, who)
        except peewee.IntegrityError:
            if attempt == REGISTER_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def register_many(
    group: Sequence[tuple[str, Sequence[dict[str, Any]], Registrant]],
) -> list[Registered | Exception]:
    """Registrations in order, in one transaction (tether/actors/group_commit.py), each in a
    savepoint: one refused rolls back only its own writes and its error is its outcome. A
    failure of the transaction itself (an outage) raises."""
    outcomes: list[Registered | Exception] = []
    postgres = isinstance(database.obj, peewee.PostgresqlDatabase)
    lone = len(group) == 1 and not postgres  # its own transaction is enough: no savepoint
    with connection() as db, contextlib.nullcontext() if lone else db.atomic():
        if postgres:
            lock_names(db, [p["name"] for _, providers, _ in group for p in providers])
        for session_id, providers, who in group:
            try:
                outcomes.append(register(session_id, providers, who))  # nested: a savepoint
            except (errors.TetherError, peewee.IntegrityError) as exc:
                outcomes.append(exc)
    return outcomes


def _register(session_id: str, providers: Sequence[dict[str, Any]],
              who: Registrant) -> Registered:
    """One attempt of `register`, in one transaction.

    One SELECT of the rows and one of the members for all names, then one write per row and
    one per member: a name this session holds alone (every name but a pool's) has its Llm
    row derived here from the member just written, not read back. A pool re-derives from the
    store, where other members' writes since the SELECT show.
    """
    now = utcnow()
    rows: list[Llm] = []
    names = [p["name"] for p in providers]
    with connection() as db, db.atomic():
        existing = {row.name: row
                    for row in _LLMS_NAMED.select(Llm, {"names": names}, len(names))}
        members = members_of(names)
        for i, spec in enumerate(providers):
            row = existing.get(spec["name"])
            pool = bool(spec.get("pool", False))
            if row is None:
                row = Llm(
                    name=spec["name"],
                    type=spec["type"],
                    model=spec["model"],
                    tier=spec.get("tier", "fast"),
                    description=spec.get("description", ""),
                    extra_config=spec.get("extraConfig", {}),
                    kind=KIND_VIRTUAL,
                    created_at=now,
                )
            elif row.kind == KIND_PUBLIC:
                raise errors.PUBLIC_LLM_CONFLICT(name=row.name)
            others = [x for x in members[row.name] if x.session_id != session_id]
            for other in others:
                joins = pool and other.pool and _compatible(other, who)
                if other.status != INACTIVE and not joins:
                    why = ("another publisher key's pool" if pool and other.pool
                           else "another publisher session" + ("" if pool else
                                                                " (no pool: true on both)"))
                    raise errors.LLM_OWNED_BY_OTHER_SESSION(
                        name=row.name, state=other.status, owner=why,
                        param=f"providers[{i}].name")
            # Inactive members never block: those that could not share the name go.
            doomed = {x.id for x in others if not (pool and x.pool and _compatible(x, who))}
            if doomed:
                LlmMember.delete().where(LlmMember.id.in_(list(doomed))).execute()
            if row.name in existing:
                row.type = spec["type"]
                for wire, field in (
                    ("tier", "tier"),
                    ("description", "description"),
                    ("extraConfig", "extra_config"),
                ):
                    if wire in spec:
                        setattr(row, field, spec[wire])
            kept = [x for x in members[row.name] if x.id not in doomed]
            mine = next((x for x in kept if x.session_id == session_id), None)
            if mine is None:
                kept.append(_write_member(row.name, session_id, spec, pool, who, now))
            else:
                _write_member(row.name, session_id, spec, pool, who, now, mine)
            _derive_from(row, kept, now)
            (_UPDATE_LLM if row.name in existing else _INSERT_LLM).execute(row.__data__)
            if len(kept) == 1:  # this session's alone: nothing else to read back
                members[row.name] = kept
            else:  # a pool: its other members may have changed since the SELECT
                derived, members[row.name] = _rederive(row.name, now)
                assert derived is not None  # it has this session's member
                row = derived
            rows.append(row)
        _within_quota(who)  # raising rolls the whole registration back
    return Registered(rows, members)


def _within_quota(who: Registrant) -> None:
    if who.key_name is None or who.admin or who.max_llms is None:
        return
    held = (LlmMember.select(LlmMember.llm_name).distinct()
            .where(LlmMember.key_name == who.key_name).count())
    if held > who.max_llms:
        raise errors.TOO_MANY_LLMS(key=who.key_name, limit=who.max_llms, param="providers")


def _write_member(name: str, session_id: str, spec: dict[str, Any], pool: bool,
                  who: Registrant, now: dt.datetime,
                  mine: LlmMember | None = None) -> LlmMember:
    """Update this session's member `mine` of `name` (as read in this transaction), or
    insert it when there is none; returns it as stored."""
    fields: dict[str, Any] = {
        "model": spec["model"],
        "status": spec.get("initialStatus", ACTIVE),
        "pool": pool,
        "max_concurrency": spec.get("maxConcurrency"),
        "key_name": who.key_name,
        "by_admin": who.admin,
        "last_heartbeat_at": now,
        "inactive_since": None,
    }
    if mine is None:
        mine = LlmMember(llm_name=name, session_id=session_id, created_at=now, **fields)
        mine.id = _INSERT_MEMBER.insert(mine.__data__)
    else:
        _UPDATE_MEMBER.execute({**fields, "id": mine.id})
        for field, value in fields.items():
            setattr(mine, field, value)
    return mine


def _derive_from(row: Llm, members: list[LlmMember], now: dt.datetime) -> None:
    """Set the Llm row's derived fields from its members (docs/protocol.md, Pools: Members)."""
    status = derived_status(x.status for x in members)
    beats = [x.last_heartbeat_at for x in members if x.last_heartbeat_at is not None]
    since = [x.inactive_since for x in members if x.inactive_since is not None]
    row.status = status
    row.provider_session_id = members[0].session_id
    row.model = members[0].model
    row.last_heartbeat_at = max(beats) if beats else None
    row.inactive_since = (max(since) if since else now) if status == INACTIVE else None
    row.updated_at = now


def _derive(name: str, now: dt.datetime) -> Llm | None:
    """Re-derive the Llm row from its members (docs/protocol.md, Pools: Members); a virtual row
    whose last member went is deleted. Runs inside the caller's transaction."""
    return _rederive(name, now)[0]


def _rederive(name: str, now: dt.datetime) -> tuple[Llm | None, list[LlmMember]]:
    """`_derive`, and the members it derived from."""
    row = get(name)
    if row is None or row.kind != KIND_VIRTUAL:
        return row, []
    members = members_of([name])[name]
    if not members:
        row.delete_instance()
        return None, []
    _derive_from(row, members, now)
    _UPDATE_LLM.execute(row.__data__)
    return row, members


def _derive_all(names: set[str], now: dt.datetime) -> None:
    for name in sorted(names):
        _derive(name, now)


def bump_heartbeat(name: str, session_id: str) -> bool:
    """The LlmActor's heartbeat write for one member; False if it is no member any more."""
    now = utcnow()
    with connection() as db, db.atomic():
        done = bool(LlmMember.update(last_heartbeat_at=now).where(
            LlmMember.llm_name == name, LlmMember.session_id == session_id).execute())
        if done:
            _derive(name, now)
        return done


def set_status(name: str, session_id: str | None, status: str) -> bool:
    """Write `status` for the member `session_id` of `name`; False if it is no member
    (any more): a write racing a newer registration changes nothing."""
    now = utcnow()
    fields: dict[Any, Any] = {LlmMember.status: status}
    if status == INACTIVE:
        fields[LlmMember.inactive_since] = now
    else:
        fields[LlmMember.inactive_since] = None
        fields[LlmMember.last_heartbeat_at] = now
    with connection() as db, db.atomic():
        done = bool(LlmMember.update(fields).where(
            LlmMember.llm_name == name, LlmMember.session_id == session_id).execute())
        if done:
            _derive(name, now)
        return done


def mark_inactive_if_stale(name: str, session_id: str | None, cutoff: dt.datetime) -> bool:
    """The sweep's write: only if the member is still stale."""
    now = utcnow()
    with connection() as db, db.atomic():
        done = bool(
            LlmMember.update(status=INACTIVE, inactive_since=now)
            .where(
                LlmMember.llm_name == name,
                LlmMember.session_id == session_id,
                LlmMember.status != INACTIVE,
                LlmMember.last_heartbeat_at < cutoff,
            )
            .execute()
        )
        if done:
            _derive(name, now)
        return done


def stale_names(cutoff: dt.datetime) -> list[str]:
    """Names with a member that is not inactive and missed its heartbeats."""
    with connection():
        query = (LlmMember.select(LlmMember.llm_name).distinct()
                 .where(LlmMember.status != INACTIVE, LlmMember.last_heartbeat_at < cutoff))
        return sorted(row.llm_name for row in query)


def delete_expired(cutoff: dt.datetime) -> list[str]:
    """Delete members inactive since before `cutoff`, and each virtual row whose last
    member that was; returns the names whose members changed."""
    now = utcnow()
    with connection() as db, db.atomic():
        doomed = list(LlmMember.select().where(
            LlmMember.status == INACTIVE, LlmMember.inactive_since < cutoff))
        if doomed:
            LlmMember.delete().where(LlmMember.id.in_([x.id for x in doomed])).execute()
        names = {x.llm_name for x in doomed}
        _derive_all(names, now)
        return sorted(names)


def withdraw(session_id: str, names: Sequence[str]) -> list[str]:
    """The session's member of each of `names` leaves (docs/protocol.md, Withdraw); a
    virtual row left without members is deleted. A name another session publishes (or a
    public one) is refused with nothing applied; a name that does not exist is ignored.
    Returns the names whose members changed."""
    now = utcnow()
    with connection() as db, db.atomic():
        rows = {row.name: row for row in _LLMS_NAMED.select(Llm, {"names": list(names)},
                                                             len(names))}
        members = members_of(list(rows))
        mine = {name: [x for x in members[name] if x.session_id == session_id]
                for name in rows}
        foreign = [name for name in rows if rows[name].kind == KIND_PUBLIC or not mine[name]]
        if foreign:
            raise errors.FORBIDDEN(
                why=f"provider session does not publish {', '.join(sorted(foreign))}")
        doomed = [x.id for xs in mine.values() for x in xs]
        if doomed:
            LlmMember.delete().where(LlmMember.id.in_(doomed)).execute()
        _derive_all(set(rows), now)
        return sorted(rows)


def deactivate_all_virtual() -> int:
    """At startup no stream can be live yet: every member is inactive until re-taken."""
    now = utcnow()
    with connection() as db, db.atomic():
        names = {x.llm_name for x in LlmMember.select(LlmMember.llm_name)
                 .where(LlmMember.status != INACTIVE)}
        LlmMember.update(status=INACTIVE, inactive_since=now).where(
            LlmMember.status != INACTIVE).execute()
        _derive_all(names, now)
        return len(names)


def deactivate_virtual_except(live_sessions: set[str]) -> int:
    """With several hub processes, at startup: every member whose session has no live home
    process goes inactive (the first process of a cluster: all of them)."""
    now = utcnow()
    with connection() as db, db.atomic():
        doomed = list(LlmMember.select(LlmMember.id, LlmMember.llm_name, LlmMember.session_id)
                      .where(LlmMember.status != INACTIVE))
        doomed = [x for x in doomed if x.session_id not in live_sessions]
        if doomed:
            LlmMember.update(status=INACTIVE, inactive_since=now).where(
                LlmMember.id.in_([x.id for x in doomed])).execute()
        names = {x.llm_name for x in doomed}
        _derive_all(names, now)
        return len(names)


def names_of_session(session_id: str) -> list[str]:
    """The names the session is a member of."""
    with connection():
        return sorted(x.llm_name for x in LlmMember.select(LlmMember.llm_name)
                      .where(LlmMember.session_id == session_id))


def delete_virtual(names: Sequence[str]) -> list[str]:
    """Delete the virtual rows (and their members) of these names: the names an alias of the
    hub's config took (docs/protocol.md, Aliases). Answers the names deleted."""
    if not names:
        return []
    with connection() as db, db.atomic():
        found = [row.name for row in Llm.select(Llm.name).where(
            Llm.name.in_(list(names)), Llm.kind == KIND_VIRTUAL)]
        if found:
            LlmMember.delete().where(LlmMember.llm_name.in_(found)).execute()
            Llm.delete().where(Llm.name.in_(found)).execute()
    return found


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
        if llms:  # a public name has no members
            LlmMember.delete().where(LlmMember.llm_name.in_([x.name for x in llms])).execute()
        removed = (Llm.delete()
                   .where(Llm.kind == KIND_PUBLIC, Llm.name.not_in([x.name for x in llms]))
                   .execute())
    return len(llms), removed
