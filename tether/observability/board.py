"""The board: the hub's live state in memory, fed by the actors (through
tether.observability.metrics).

It is what the status page, its live feed, `tether status` and the gauges of /metrics read.
Nothing here touches the database: actors report their state after every message they
handle, so a reader never asks an actor and never queries a row. With several hub processes
each process shares its own part with the others through Redis (tether.cluster.shared_board)
and the status page merges theirs in; /metrics stays this process's own.

Watchers (the status feed) are woken through a threading.Event, which gevent makes
cooperative; they read a whole snapshot each time, so a slow watcher only skips states.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, NamedTuple, Protocol

RECENT_ERRORS = 50


# Rows are NamedTuples: actors report after every message they handle (twice a relayed
# request per actor), and building and comparing a tuple costs a fraction of a dataclass.
class _Llm(NamedTuple):
    owner: str  # the actor's urn: a stopping actor must not remove its successor's row
    name: str
    kind: str
    status: str
    session_id: str | None
    waking: bool
    in_flight: int
    queued: int


class _Session(NamedTuple):
    owner: str
    stream_open: bool
    open_tasks: int


class ClusterView(Protocol):
    def merge(self, llms: dict[str, dict[str, Any]], sessions: dict[str, dict[str, Any]],
              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]: ...


class Watcher:
    def __init__(self, board: Board) -> None:
        self._board = board
        self._event = threading.Event()
        self._event.set()  # the first wait returns at once: the watcher starts with a snapshot

    def wait(self, timeout: float) -> bool:
        """True when something changed since the last wait (or on the first call)."""
        changed = self._event.wait(timeout)
        self._event.clear()
        return changed

    def notify(self) -> None:
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._board.closed

    def close(self) -> None:
        self._board.unwatch(self)


class Board:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._llms: dict[str, _Llm] = {}
        self._heartbeats: dict[str, float] = {}  # llm name -> epoch of its last heartbeat
        self._wakes: dict[str, dict[str, Any]] = {}  # llm name -> its last wake
        self._sessions: dict[str, _Session] = {}
        self._errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self._requests = 0
        self._failed = 0
        self._watchers: set[Watcher] = set()
        self.closed = False  # shutting down: watchers stop watching
        self.version = 0  # bumped by every change, including those that wake no watcher
        # With several hub processes: how to merge in the others' Llms and sessions
        # (tether.cluster.shared_board), set while this process is part of a cluster.
        self.cluster: ClusterView | None = None
        self._dirty: set[tuple[str, str]] | None = None  # noted only in a cluster
        # The hub's aliases (docs/protocol.md, Aliases), name -> targets: config, set once
        # at startup; each is shown with the target that serves it now.
        self.aliases: dict[str, tuple[str, ...]] = {}

    # --- writers (actors, reply channels) ------------------------------------------------

    def llm(self, owner: str, name: str, kind: str, status: str, session_id: str | None,
            waking: bool, in_flight: int, queued: int, heartbeat: bool = False) -> None:
        row = _Llm(owner, name, kind, status, session_id, waking, in_flight, queued)
        with self._lock:
            if heartbeat:
                # A heartbeat alone wakes no watcher: thousands of publishers heartbeat all
                # the time. Watchers pick it up with their next snapshot (see `version`).
                self._heartbeats[name] = time.time()
                self.version += 1
                self._changed("l", name)
            if self._llms.get(name) == row:
                return
            self._llms[name] = row
            self._changed("l", name)
            watchers = self._bump()  # in the same hold of the lock: this runs very often
        _wake(watchers)

    def llm_gone(self, owner: str, name: str) -> None:
        with self._lock:
            row = self._llms.get(name)
            if row is None or row.owner != owner:
                return
            del self._llms[name]
            self._heartbeats.pop(name, None)
            self._wakes.pop(name, None)
            self._changed("l", name)
        self._notify()

    def actor_down(self, kind: str, key: str) -> None:
        """A crashed actor that will not be restarted: it reports nothing any more."""
        with self._lock:
            if kind == "llm" and key in self._llms:
                row = self._llms[key]
                self._llms[key] = _Llm(row.owner, row.name, row.kind, "inactive",
                                       row.session_id, False, 0, 0)
                self._changed("l", key)
            elif kind == "session" and key in self._sessions:
                self._sessions[key] = _Session(self._sessions[key].owner, False, 0)
                self._changed("s", key)
        self._notify()

    def session(self, owner: str, session_id: str, stream_open: bool, open_tasks: int) -> None:
        entry = _Session(owner, stream_open, open_tasks)
        with self._lock:
            if self._sessions.get(session_id) == entry:
                return
            self._sessions[session_id] = entry
            self._changed("s", session_id)
            watchers = self._bump()
        _wake(watchers)

    def session_gone(self, owner: str, session_id: str) -> None:
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None or entry.owner != owner:
                return
            del self._sessions[session_id]
            self._changed("s", session_id)
        self._notify()

    def wake_started(self, name: str) -> None:
        with self._lock:
            last = self._wakes.get(name, {})
            self._wakes[name] = {**last, "startedAt": time.time(), "running": True}
            self._changed("l", name)
        self._notify()

    def wake_ended(self, name: str, outcome: str, seconds: float) -> None:
        with self._lock:
            last = self._wakes.get(name, {})
            self._wakes[name] = {**last, "running": False, "outcome": outcome,
                                 "seconds": round(seconds, 3)}
            self._changed("l", name)
        self._notify()

    def request_done(self, llm: str, status: int, code: str | None) -> None:
        with self._lock:
            self._requests += 1
            if status >= 400 and status != 499:
                self._failed += 1
                # Code, Llm and time only: an error message may quote the client's request.
                self._errors.appendleft({"at": time.time(), "llm": llm, "status": status,
                                         "code": code or str(status)})
        self._notify()

    # --- readers -------------------------------------------------------------------------

    def _llm_entry(self, row: _Llm) -> dict[str, Any]:
        wake = self._wakes.get(row.name, {})
        return {
            "kind": row.kind,
            "status": "waking" if row.waking else row.status,
            "session": row.session_id,
            "inFlight": row.in_flight,
            "queued": row.queued,
            "lastHeartbeatAt": self._heartbeats.get(row.name),
            "lastWakeAt": wake.get("startedAt"),
            "lastWakeSeconds": wake.get("seconds"),
            "lastWakeOutcome": wake.get("outcome"),
        }

    @staticmethod
    def _session_entry(entry: _Session) -> dict[str, Any]:
        return {"streamOpen": entry.stream_open, "openTasks": entry.open_tasks}

    def local(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """This process's Llms (by name) and sessions (by id) as plain data: what the status
        rows are made of, and what a process shares with the others of a cluster."""
        with self._lock:
            return ({name: self._llm_entry(row) for name, row in self._llms.items()},
                    {sid: self._session_entry(e) for sid, e in self._sessions.items()})

    # --- sharing with the other processes of a cluster ----------------------------------

    def _changed(self, kind: str, key: str) -> None:
        """(Under the lock.) Note what changed, for the cluster's copy of this board."""
        if self._dirty is not None:
            self._dirty.add((kind, key))

    def track_changes(self) -> None:
        """From now on note what changes (everything counts as changed once): a process of a
        cluster writes only what changed since its last write (tether.cluster.shared_board)."""
        with self._lock:
            self._dirty = {("l", n) for n in self._llms} | {("s", s) for s in self._sessions}

    def take_changes(self, also: set[str] | frozenset[str] = frozenset(),
                     ) -> tuple[dict[str, dict[str, Any] | None], dict[str, dict[str, Any] | None]]:
        """The Llms (and those named in `also`) and sessions changed since the last call, as
        `local()` shows them; None for one that is gone."""
        with self._lock:
            dirty, self._dirty = self._dirty or set(), set()
            names = {key for kind, key in dirty if kind == "l"} | set(also)
            llms = {name: (self._llm_entry(self._llms[name]) if name in self._llms else None)
                    for name in names}
            sessions = {key: (self._session_entry(self._sessions[key])
                              if key in self._sessions else None)
                        for kind, key in dirty if kind == "s"}
        return llms, sessions

    def snapshot(self, whole_cluster: bool = False) -> dict[str, Any]:
        """The state as the status page shows it. `whole_cluster`: with `cluster` set (several
        hub processes), the Llms and sessions of every process, merged by `cluster`; the
        errors and request counts stay this process's own."""
        llms, sessions = self.local()
        cluster = self.cluster
        if whole_cluster and cluster is not None:
            llms, sessions = cluster.merge(llms, sessions)
        with self._lock:
            errors = list(self._errors)
            requests, failed, feeds = self._requests, self._failed, len(self._watchers)
        rows: list[dict[str, Any]] = []
        for name in sorted(llms):
            row = llms[name]
            session = sessions.get(row["session"] or "")
            rows.append({
                "name": name,
                "kind": row["kind"],
                "status": row["status"],
                "session": row["session"],
                "streamOpen": bool(session and session["streamOpen"]),
                "inFlight": row["inFlight"],
                "queued": row["queued"],
                "lastHeartbeatAt": row["lastHeartbeatAt"],
                "lastWakeAt": row["lastWakeAt"],
                "lastWakeSeconds": row["lastWakeSeconds"],
                "lastWakeOutcome": row["lastWakeOutcome"],
            })
        aliases = [{"name": name, "targets": list(targets),
                    "serving": _serving(targets, {r["name"]: r for r in rows})}
                   for name, targets in sorted(self.aliases.items())]
        by_status: dict[str, int] = {}
        for wire in rows:
            by_status[wire["status"]] = by_status.get(wire["status"], 0) + 1
        return {
            "at": time.time(),
            "llms": rows,
            "aliases": aliases,
            "errors": errors,
            "totals": {
                "llms": len(rows),
                "byStatus": by_status,
                "sessions": len(sessions),
                "streamsOpen": sum(1 for s in sessions.values() if s["streamOpen"]),
                "inFlight": sum(r["inFlight"] for r in rows),
                "queued": sum(r["queued"] for r in rows),
                "requests": requests,
                "errors": failed,
                "feeds": feeds,
            },
        }

    def watching(self) -> bool:
        """Whether a status feed watches (then a cluster's other processes are read for it)."""
        return bool(self._watchers)

    def watch(self) -> Watcher:
        watcher = Watcher(self)
        with self._lock:
            self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def close(self) -> None:
        self.closed = True
        self._notify()

    def changed_elsewhere(self) -> None:
        """Another process of the cluster changed what a watcher shows: wake the feeds."""
        self._notify()

    def _bump(self) -> list[Watcher]:
        """(Under the lock.) Count a change; the watchers to wake once the lock is let go."""
        self.version += 1
        return list(self._watchers) if self._watchers else []

    def _notify(self) -> None:
        with self._lock:
            watchers = self._bump()
        _wake(watchers)


def _serving(targets: tuple[str, ...], rows: dict[str, dict[str, Any]]) -> str | None:
    """The alias's target that takes its requests now: the first `active` one, served by
    an open stream (a public Llm needs none); None when the next request would wait."""
    for name in targets:
        row = rows.get(name)
        if row is not None and row["status"] == "active" and (
                row["kind"] == "public" or row["streamOpen"]):
            return name
    return None


def _wake(watchers: list[Watcher]) -> None:
    for watcher in watchers:
        watcher.notify()


BOARD = Board()
