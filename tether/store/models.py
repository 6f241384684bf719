"""peewee models. Field names are snake_case here; the wire uses camelCase (see render)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from typing import Any

import peewee

from tether.store.db import database

KIND_VIRTUAL = "virtual"
KIND_PUBLIC = "public"
ACTIVE = "active"
HIBERNATING = "hibernating"
INACTIVE = "inactive"


def derived_status(statuses: Iterable[str]) -> str:
    """A pooled Llm's status from its members' (docs/protocol.md, Pools: Members): active if one
    is, else hibernating if one is, else inactive."""
    found = set(statuses)
    return ACTIVE if ACTIVE in found else HIBERNATING if HIBERNATING in found else INACTIVE


def utcnow() -> dt.datetime:
    """Naive UTC: what the database stores and compares."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class JSONField(peewee.TextField):
    def db_value(self, value: Any) -> str:
        return json.dumps(value if value is not None else {}, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return json.loads(value) if value else {}


class BaseModel(peewee.Model):
    class Meta:
        database = database


class Llm(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=36, default=lambda: str(uuid.uuid4()))
    name = peewee.CharField(unique=True, max_length=128)
    type = peewee.CharField(max_length=64)
    model = peewee.CharField(max_length=256)
    tier = peewee.CharField(max_length=64, default="fast")
    description = peewee.TextField(default="")
    extra_config = JSONField(default=dict)
    kind = peewee.CharField(max_length=16, default=KIND_VIRTUAL)
    provider_session_id = peewee.CharField(max_length=128, null=True, index=True)
    status = peewee.CharField(max_length=16, default=ACTIVE)
    last_heartbeat_at = peewee.DateTimeField(null=True)
    inactive_since = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "llm"
        indexes = (
            # The sweep's two queries.
            (("status", "last_heartbeat_at"), False),
            (("status", "inactive_since"), False),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "model": self.model,
            "tier": self.tier,
            "description": self.description,
            "extraConfig": self.extra_config,
            "kind": self.kind,
            "providerSessionId": self.provider_session_id,
            "status": self.status,
            "lastHeartbeatAt": iso(self.last_heartbeat_at),
            "inactiveSince": iso(self.inactive_since),
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


class LlmMember(BaseModel):
    """One publisher session serving a virtual Llm (docs/protocol.md, Pools). A name published
    without `pool: true` has exactly one; the Llm row's status, providerSessionId, model,
    lastHeartbeatAt and inactiveSince are derived from its members on every write."""

    # peewee's implicit primary key, spelled out so that type checkers see `id` too.
    id = peewee.AutoField()
    llm_name = peewee.CharField(max_length=128)
    session_id = peewee.CharField(max_length=128, index=True)
    model = peewee.CharField(max_length=256)
    status = peewee.CharField(max_length=16, default=ACTIVE)
    pool = peewee.BooleanField(default=False)
    max_concurrency = peewee.IntegerField(null=True)
    # With auth on: the publisher key that registered this member, and whether it was an
    # admin key (compatible with any key). None with auth off.
    key_name = peewee.CharField(max_length=128, null=True)
    by_admin = peewee.BooleanField(default=False)
    last_heartbeat_at = peewee.DateTimeField(null=True)
    inactive_since = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "llm_member"
        indexes = ((("llm_name", "session_id"), True),)

    def to_wire(self, in_flight: int = 0) -> dict[str, Any]:
        return {
            "providerSessionId": self.session_id,
            "model": self.model,
            "status": self.status,
            "lastHeartbeatAt": iso(self.last_heartbeat_at),
            "inactiveSince": iso(self.inactive_since),
            "maxConcurrency": self.max_concurrency,
            "inFlight": in_flight,
        }


class ApiKey(BaseModel):
    """A bearer key. Only a salted hash of its secret is kept; the key is shown once."""

    name = peewee.CharField(unique=True, max_length=128)
    role = peewee.CharField(max_length=16)
    key_id = peewee.CharField(unique=True, max_length=32)
    salt = peewee.CharField(max_length=64)
    digest = peewee.CharField(max_length=128)
    created_at = peewee.DateTimeField(default=utcnow)
    revoked_at = peewee.DateTimeField(null=True)
    # A client key limited to some Llms (docs/protocol.md, Conventions): a JSON list of
    # names; NULL for a key that may use every Llm.
    llms = peewee.TextField(null=True)

    class Meta:
        table_name = "api_key"


class SessionOwner(BaseModel):
    """A provider session belongs to the publisher key that first registered it."""

    session_id = peewee.CharField(primary_key=True, max_length=128)
    key_name = peewee.CharField(max_length=128)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "session_owner"


class UsageBucket(BaseModel):
    """Requests and tokens of one client key on one Llm in one hour (docs/protocol.md,
    Usage): counts only, never text. Each hub process adds its increments (an upsert), so
    a row is the sum over every process. "" stands for no key (auth off) and no alias, so
    that the unique index holds (NULLs never collide in one)."""

    id = peewee.AutoField()
    hour = peewee.DateTimeField()  # naive UTC, the start of the hour
    key_name = peewee.CharField(max_length=128)
    llm = peewee.CharField(max_length=128)
    alias_name = peewee.CharField(max_length=128, default="")  # (Model.alias is taken)
    requests = peewee.BigIntegerField(default=0)
    prompt_tokens = peewee.BigIntegerField(default=0)
    completion_tokens = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "usage_bucket"
        indexes = ((("hour", "key_name", "llm", "alias_name"), True),)


class SchemaVersion(BaseModel):
    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_version"


ALL_MODELS = (Llm, LlmMember, ApiKey, SessionOwner, UsageBucket, SchemaVersion)
