"""Who is calling, and may they? Keys, roles and provider-session ownership (docs/protocol.md,
Conventions). Every resource declares the `role` it serves; the middleware enforces it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import falcon

from tether import errors
from tether.config import Settings
from tether.store import keys
from tether.store.keys import Caller

# With auth off (the default on a loopback address) every caller may do everything.
ANONYMOUS = Caller("anonymous", "admin")


class KeyCache:
    """Verified keys in memory, so that a request costs no SELECT.

    An answer (a caller, or None for an unknown or revoked key) is trusted for
    `revalidate_s`; the first request after that reads the key's row again. So a key
    revoked with `tether keys revoke` (another process, same database) is refused within
    one second, and each key costs at most two small reads a second, however busy.
    Entries are keyed by a hash of the key, not the key itself.

    With a bus, revocations are pushed (tether.http.revocations calls `evict`): while that
    feed is up (`pushed`), a valid key is trusted for `pushed_s` instead; unknown and
    revoked keys are still re-read after `revalidate_s` (a key created since is found).
    """

    def __init__(self, verify: Callable[[str], Caller | None] = keys.verify,
                 revalidate_s: float = 0.5, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, pushed_s: float = 30.0) -> None:
        self._verify = verify
        self._revalidate_s = revalidate_s
        self._pushed_s = pushed_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[Caller | None, float]] = {}
        self._evictions = 0  # a verify that overlapped an eviction does not store its answer
        self.pushed = False

    def caller(self, key: str) -> Caller | None:
        digest = hashlib.sha256(key.encode()).digest()
        now = self._clock()
        hit = self._entries.get(digest)
        if hit is not None:
            trust = self._pushed_s if self.pushed and hit[0] is not None else self._revalidate_s
            if now - hit[1] < trust:
                return hit[0]
        evictions = self._evictions
        caller = self._verify(key)
        if evictions != self._evictions:
            return caller  # read before a revocation arrived, maybe: not kept
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # a flood of made-up keys must not grow memory
        self._entries[digest] = (caller, now)
        return caller

    def evict(self, name: str) -> None:
        """Forget every key of the key named `name` (it was revoked, or its scope changed)."""
        self._evictions += 1
        for digest, (caller, _) in list(self._entries.items()):
            if caller is not None and caller.name == name:
                del self._entries[digest]

    def clear(self) -> None:
        self._evictions += 1
        self._entries.clear()


def allow_llm(caller: Caller, name: str) -> bool:
    """Whether `caller` may use `name` (docs/protocol.md, Conventions: key scopes). A key
    limited to some names may use those alone, whether they exist or not. Alias code asks
    this of the name the client sent: a target reached through an allowed alias is allowed,
    so targets are never checked."""
    return caller.llms is None or name in caller.llms


def check_llm(caller: Caller, name: str) -> None:
    """403 llm_not_allowed unless `caller` may use the Llm (or alias) `name`: every route
    that names one asks this before anything else (before its 404, and before the rate
    limits count the request)."""
    if not allow_llm(caller, name):
        raise errors.LLM_NOT_ALLOWED(name=name)


def usage_key(caller: Caller) -> str | None:
    """The key name usage counts for: None with auth off (docs/protocol.md, Usage)."""
    return None if caller is ANONYMOUS else caller.name


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.keys = KeyCache()
        self._owners: dict[str, str] = {}  # session id -> key name; an owner never changes

    def authenticate(self, req: falcon.Request) -> Caller:
        if not self.enabled:
            return ANONYMOUS
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.UNAUTHORIZED(why="send your key as 'Authorization: Bearer <key>'")
        caller = self.keys.caller(token.strip())
        if caller is None:
            raise errors.UNAUTHORIZED(why="unknown or revoked key")
        return caller

    def require_role(self, caller: Caller, role: str | None) -> None:
        if role is None or caller.role == "admin" or caller.role == role:
            return
        raise errors.FORBIDDEN(
            why=f"a {caller.role} key cannot use this route (it needs {role})")

    def claim(self, session_id: str, caller: Caller) -> None:
        """Register: the first key to present a session id owns it."""
        if not self.enabled:
            return
        owner = self._owners.get(session_id) or keys.claim_session(session_id, caller.name)
        self._owners[session_id] = owner
        if owner != caller.name and caller.role != "admin":
            raise errors.FORBIDDEN(why=f"provider session {session_id!r} belongs to another key")

    def _owner(self, session_id: str) -> str | None:
        owner = self._owners.get(session_id)
        if owner is None:
            owner = keys.session_owner(session_id)  # a read: only a register claims an id
            if owner is not None:
                self._owners[session_id] = owner
        return owner

    def owns(self, session_id: str, caller: Caller) -> bool:
        if not self.enabled or caller.role == "admin":
            return True
        return self._owner(session_id) == caller.name

    def check_owner(self, session_id: str, caller: Caller) -> None:
        """Stream, heartbeat, status: an id that no register claimed is unknown (404), so a
        key cannot squat an id its rightful publisher has yet to register."""
        if not self.enabled:
            return
        owner = self._owner(session_id)
        if owner is None and caller.role != "admin":
            raise errors.SESSION_NOT_FOUND(session_id=session_id)
        if owner is not None and owner != caller.name and caller.role != "admin":
            raise errors.FORBIDDEN(why=f"provider session {session_id!r} belongs to another key")


class AuthMiddleware:
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is None:
            return  # no such route: 404 follows
        if req.method == "OPTIONS":
            # A CORS preflight never carries credentials; falcon's default OPTIONS responder
            # only lists the route's methods.
            req.context.caller = ANONYMOUS
            return
        role = getattr(resource, "role", "admin")  # a resource that names no role is admin's
        if role is None:
            req.context.caller = ANONYMOUS
            return
        caller = self.auth.authenticate(req)
        self.auth.require_role(caller, role)
        req.context.caller = caller
