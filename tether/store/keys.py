"""Bearer keys and provider-session ownership."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import peewee

from tether.store.db import connection
from tether.store.models import ApiKey, SessionOwner, utcnow

ROLES = ("publisher", "client", "admin")
PREFIX = "tk"


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def _digest(salt: str, secret: str) -> str:
    # Keys carry 256 random bits, so one salted SHA-256 is as strong as a slow KDF here
    # and keeps the check off the hot path's budget.
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def create(name: str, role: str) -> str:
    """Create a key; returns it. It is never stored and cannot be shown again."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    with connection():
        try:
            ApiKey.create(name=name, role=role, key_id=key_id, salt=salt,
                          digest=_digest(salt, secret))
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
    return Caller(row.name, row.role)


def revoke(name: str) -> bool:
    with connection():
        return bool(ApiKey.update(revoked_at=utcnow())
                    .where(ApiKey.name == name, ApiKey.revoked_at.is_null())
                    .execute())


def list_keys() -> list[dict[str, str | None]]:
    with connection():
        return [{"name": k.name, "role": k.role, "createdAt": k.created_at.isoformat(),
                 "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None}
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
