"""Every hub process's live board, shared (docs/protocol.md, Several hub processes: `/status` and
`GET /api/v1/llms…` show the whole cluster).

The board (tether.observability.board) holds what this process's actors report: the Llm
names it owns (status, queue, in flight, wakes) and the sessions homed here (their streams).
Each process writes its part to a Redis hash of its own, `<prefix>:board:<process>`:
`l:<name>` and `s:<session>` -> JSON (an Llm's entry also has each member's in-flight
count), `_v` a version bumped by every write, `_at` the write's time. Only what changed is
written, at most every PUSH_GAP_S; the hash's TTL (the liveness TTL) is renewed every tick,
so the part of a process that died expires with its liveness key (the survivor that buries
it deletes it at once). A hash found gone (Redis restarted) is written whole again.

Readers merge the others' parts with their own board. A name owned here shows as this process
sees it; one owned elsewhere as its owner last wrote it (with two writers for one name, the
newest write wins: an owner that just lost the name, or died, wrote last before that); a
public Llm, served by every process on its own, sums their in-flight and queued counts.
A reader first reads every part's version (one round trip) and then only the parts that
changed; a read of one Llm reads that Llm's field of each part instead. Without a bus none
of this exists: the board is the process's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tether.cluster.bus import TICK_S, Bus
from tether.cluster.redis_client import Outage
from tether.common.runtime import spawn
from tether.observability.board import Board
from tether.store.models import KIND_PUBLIC

log = logging.getLogger("tether.board")

PUSH_GAP_S = 0.1  # a change reaches the other processes this much later, at most
ONE_BY_ONE = 8  # a read of at most this many Llms reads their fields, not whole parts

Entries = dict[str, dict[str, Any]]

# Every other process (KEYS[1] the process set, ARGV[2] this one) and its part's version
# (ARGV[1] .. process is its hash; false where it has none): process, version, process, ...
_VERSIONS = """
local out = {}
for _, p in ipairs(redis.call('smembers', KEYS[1])) do
  if p ~= ARGV[2] then
    table.insert(out, p)
    table.insert(out, redis.call('hget', ARGV[1] .. p, '_v') or false)
  end
end
return out
"""

# The fields ARGV[3..] of every other process's part, one list per process that has one.
_SOME = """
local fields = {}
for i = 3, #ARGV do table.insert(fields, ARGV[i]) end
local out = {}
for _, p in ipairs(redis.call('smembers', KEYS[1])) do
  if p ~= ARGV[2] and redis.call('exists', ARGV[1] .. p) == 1 then
    table.insert(out, redis.call('hmget', ARGV[1] .. p, unpack(fields)))
  end
end
return out
"""


@dataclass
class _Part:
    """Another process's part, as last read."""

    version: str
    at: float = 0.0
    llms: Entries = field(default_factory=dict)
    sessions: Entries = field(default_factory=dict)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(raw: str | bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class SharedBoard:
    """This process's part of the cluster's board (writer) and the others' (reader).
    `in_flight(name)` is the members' in-flight counts of a name owned here."""

    def __init__(self, bus: Bus, board: Board,
                 in_flight: Callable[[str], Mapping[str, int]]) -> None:
        self._bus = bus
        self._board = board
        self._in_flight = in_flight
        self._key = self.key_of(bus.process)
        # The processes are listed in Redis (a set every process renews each tick): read
        # with the parts in one round trip, a process that just started is seen at once.
        self._versions = bus.redis.register_script(_VERSIONS)
        self._some = bus.redis.register_script(_SOME)
        self._counts_changed: set[str] = set()  # names whose members' counts changed
        self._renewed = 0.0
        self._wrote = False  # the hash exists (unless Redis lost it)
        self._running = False
        self._parts: dict[str, _Part] = {}
        self._watch_versions: tuple[str | None, ...] = ()
        # Logged once per Redis outage each, not at every try (tether.cluster.redis_client.Outage).
        self._pushing = Outage(log, "board", bus.url, "this process's board updates",
                               f"retrying every {PUSH_GAP_S:g} s")
        self._reading = Outage(log, "board", bus.url, "reads of the other processes' boards",
                               "showing this process's alone until it does")

    def key_of(self, process: str) -> str:
        return self._bus.key("board", process)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> SharedBoard:
        self._board.track_changes()
        self._board.cluster = self
        self._running = True
        spawn(self._push_loop)
        return self

    def stop(self) -> None:
        self._running = False
        if self._board.cluster is self:
            self._board.cluster = None
        with contextlib.suppress(redis.RedisError):
            self._bus.redis.delete(self._key)

    def counts_changed(self, name: str) -> None:
        """The members' in-flight counts of `name` changed (its total may not have)."""
        self._counts_changed.add(name)

    # --- writing -------------------------------------------------------------------------

    def _push_loop(self) -> None:
        while self._running:
            try:
                self._push()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                self._pushing.failed(exc)
                self._board.track_changes()  # what failed to go is written again
            else:
                self._pushing.answered()
            try:
                if self._board.watching():
                    self._tell_watchers()
            except redis.RedisError:
                pass  # the feed shows what it had; the next tick tries again
            time.sleep(PUSH_GAP_S)

    def _push(self) -> None:
        names, self._counts_changed = self._counts_changed, set()
        llms, sessions = self._board.take_changes(names)
        now = time.monotonic()
        if not llms and not sessions and now - self._renewed < TICK_S:
            return
        written: dict[Any, Any] = {}  # (redis-py's stubs want its own key and value types)
        gone: list[str] = []
        for name, entry in llms.items():
            if entry is None:
                gone.append(f"l:{name}")
                continue
            if entry["kind"] != KIND_PUBLIC:
                entry = {**entry, "members": dict(self._in_flight(name))}
            written[f"l:{name}"] = _dumps(entry)
        for session_id, entry in sessions.items():
            if entry is None:
                gone.append(f"s:{session_id}")
            else:
                written[f"s:{session_id}"] = _dumps(entry)
        pipe = self._bus.redis.pipeline(transaction=True)
        pipe.pexpire(self._key, self._bus.ttl_ms)  # 0: the hash is not there (first, or lost)
        if written or gone:
            if gone:
                pipe.hdel(self._key, *gone)
            pipe.hset(self._key, mapping={**written, "_at": repr(time.time())})
            pipe.hincrby(self._key, "_v", 1)
            pipe.pexpire(self._key, self._bus.ttl_ms)
        there = pipe.execute()[0]
        lost = not there and self._wrote
        self._wrote = self._wrote or bool(written or gone)
        if lost:
            # Redis lost it (restarted): what was written before goes again, whole.
            log.info("board: the shared copy was gone; writing it again")
            self._board.track_changes()
        self._renewed = now

    # --- reading -------------------------------------------------------------------------

    def _refresh(self) -> dict[str, _Part]:
        """Every other part, reading again only those whose version changed."""
        listed = self._versions(keys=[self._bus.key("procs")],
                                args=[self.key_of(""), self._bus.process])
        versions = {str(p): str(v) for p, v in zip(listed[::2], listed[1::2], strict=True)
                    if v}
        stale = [p for p, v in versions.items()
                 if p not in self._parts or self._parts[p].version != v]
        if stale:
            pipe = self._bus.redis.pipeline(transaction=False)
            for process in stale:
                pipe.hgetall(self.key_of(process))
            for process, raw in zip(stale, pipe.execute(), strict=True):
                self._parts[process] = self._parse(raw)
        self._parts = {p: part for p, part in self._parts.items() if p in versions}
        return self._parts

    @staticmethod
    def _parse(raw: Mapping[str, str]) -> _Part:
        part = _Part(str(raw.get("_v", "")), float(raw.get("_at") or 0.0))
        for key, value in raw.items():
            kind, _, name = key.partition(":")
            entry = _loads(value) if kind in ("l", "s") else None
            if isinstance(entry, dict):
                (part.llms if kind == "l" else part.sessions)[name] = entry
        return part

    def _tell_watchers(self) -> None:
        """A status feed watches here: wake it when another process's part changed."""
        parts = self._refresh()
        versions = tuple(parts[p].version for p in sorted(parts))
        if versions != self._watch_versions:
            self._watch_versions = versions
            self._board.changed_elsewhere()

    def merge(self, llms: Entries, sessions: Entries) -> tuple[Entries, Entries]:
        """This process's Llms and sessions with every other process's (see the module)."""
        try:
            parts = sorted(self._refresh().values(), key=lambda part: part.at)
        except redis.RedisError as exc:
            self._reading.failed(exc)
            return llms, sessions
        self._reading.answered()
        merged_llms = dict(llms)
        merged_sessions = dict(sessions)
        for part in parts:  # the oldest write first: a newer one replaces it
            for name, entry in part.llms.items():
                mine = merged_llms.get(name)
                if entry.get("kind") == KIND_PUBLIC and mine is not None:
                    merged_llms[name] = {**mine,
                                         "inFlight": mine["inFlight"] + entry["inFlight"],
                                         "queued": mine["queued"] + entry["queued"]}
                elif name not in llms:
                    merged_llms[name] = entry
            for session_id, entry in part.sessions.items():
                if session_id not in sessions:
                    merged_sessions[session_id] = entry
        return merged_llms, merged_sessions

    def member_counts(self, names: list[str]) -> dict[str, Mapping[str, int]]:
        """The members' in-flight counts of `names` (owned elsewhere), as their owners last
        wrote them; a name nobody wrote is left out."""
        if not names:
            return {}
        try:
            if len(names) <= ONE_BY_ONE:
                entries = self._fields(names)
            else:
                entries = {}
                for part in sorted(self._refresh().values(), key=lambda part: part.at):
                    entries.update({n: part.llms[n] for n in names if n in part.llms})
        except redis.RedisError as exc:
            # Redis does not answer (or restarted without our scripts): a read shows what
            # this process knows, and the outage is logged once (self._reading), without a
            # traceback, rather than failing the read.
            self._reading.failed(exc)
            return {}
        self._reading.answered()
        return {name: entry.get("members") or {} for name, entry in entries.items()}

    def _fields(self, names: list[str]) -> Entries:
        listed = self._some(keys=[self._bus.key("procs")],
                            args=[self.key_of(""), self._bus.process, "_at",
                                  *(f"l:{n}" for n in names)])
        found: list[tuple[float, str, dict[str, Any]]] = []
        for values in listed:
            at = float(values[0] or 0.0)
            for name, raw in zip(names, values[1:], strict=True):
                entry = _loads(raw)
                if isinstance(entry, dict):
                    found.append((at, name, entry))
        return {name: entry for _, name, entry in sorted(found, key=lambda f: f[0])}
