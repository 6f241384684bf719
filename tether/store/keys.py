"""Bearer keys and provider-session ownership."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import peewee

from tether.common.names import LLM_NAME_PATTERN
from tether.store.db import connection
from tether.store.models import ApiKey, SessionOwner, utcnow

ROLES = ("publisher", "client", "admin")
PREFIX = "tk"


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    # The Llm (or alias) names a client key is limited to; None: every Llm.
    llms: frozenset[str] | None = None


def scope(names: Iterable[str]) -> list[str]:
    """The names a key is limited to, checked and sorted; ValueError naming the first
    invalid one (names are not checked against the hub's Llms: its config is not at hand)."""
    out = set()
    for name in names:
        if not re.fullmatch(LLM_NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not a valid Llm name ({LLM_NAME_PATTERN})")
        out.add(name)
    if not out:
        raise ValueError("--llms needs at least one name")
    return sorted(out)


def _scope_value(role: str, llms: Iterable[str] | None) -> str | None:
    if llms is None:
        return None
    if role != "client":
        raise ValueError(f"--llms is for client keys only (this one is a {role} key)")
    return json.dumps(scope(llms))


def _scope_of(row: ApiKey) -> frozenset[str] | None:
    return frozenset(json.loads(row.llms)) if row.llms is not None else None


def _digest(salt: str, secret: str) -> str:
    # Keys carry 256 random bits, so one salted SHA-256 is as strong as a slow KDF here
    # and keeps the check off the hot path's budget.
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def create(name: str, role: str, llms: Iterable[str] | None = None) -> str:
    """Create a key; returns it. It is never stored and cannot be shown again. `llms`: the
    names a client key is limited to (None: every Llm)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    limited = _scope_value(role, llms)
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    with connection():
        try:
            ApiKey.create(name=name, role=role, key_id=key_id, salt=salt,
                          digest=_digest(salt, secret), llms=limited)
        except peewee.IntegrityError:
            raise ValueError(f"a key named {name!r} already exists") from None
    return f"{PREFIX}_{key_id}_{secret}"


def verify(key: str) -> Caller | None:
    """The caller a key stands for; None when unknown, malformed or revoked."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret:
        return None
    with connection():
        row = ApiKey.get_or_none(ApiKey.key_id == key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.digest, _digest(row.salt, secret)):
        return None
    return Caller(row.name, row.role, _scope_of(row))


def revoke(name: str) -> bool:
    with connection():
        return bool(ApiKey.update(revoked_at=utcnow())
                    .where(ApiKey.name == name, ApiKey.revoked_at.is_null())
                    .execute())


def set_llms(name: str, llms: Iterable[str] | None) -> bool:
    """Limit the active key `name` to `llms` (None: every Llm again); False when there is
    no such key. ValueError for an invalid name, or a key that is not a client's."""
    with connection() as db, db.atomic():
        row = ApiKey.get_or_none(ApiKey.name == name, ApiKey.revoked_at.is_null())
        if row is None:
            return False
        ApiKey.update(llms=_scope_value(row.role, llms)).where(ApiKey.name == name).execute()
        return True


def list_keys() -> list[dict[str, Any]]:
    """Every key, never its secret; `llms`: the names it is limited to, or None."""
    with connection():
        return [{"name": k.name, "role": k.role, "createdAt": k.created_at.isoformat(),
                 "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None,
                 "llms": sorted(names) if (names := _scope_of(k)) is not None else None}
                for k in ApiKey.select().order_by(ApiKey.name)]


def claim_session(session_id: str, key_name: str) -> str:
    """Record `key_name` as the owner unless the session has one; returns the owner."""
    with connection() as db, db.atomic():
        SessionOwner.insert(session_id=session_id, key_name=key_name).on_conflict_ignore() \
            .execute()
        return SessionOwner.get(SessionOwner.session_id == session_id).key_name


def session_owner(session_id: str) -> str | None:
    with connection():
        row = SessionOwner.get_or_none(SessionOwner.session_id == session_id)
    return row.key_name if row is not None else None
