"""Who owns each Llm name, and which process is each session's home (Redis keys).

Leases: `<prefix>:lease:<name>` holds the owner's process id, set with a TTL and renewed
every second by the owner. A lease is *valid* only while its holder's liveness key exists:
the take-over is one Lua compare-and-set that replaces a lease whose holder's key is gone.
Why both: the liveness key is what every process already checks to find dead peers, so a
name moves as soon as its owner is known dead (one TTL), without a second clock per name;
the lease's own TTL only cleans up after a process that stopped cleanly or lost Redis.

Homes: one hash `<prefix>:home`, session id -> "<process> <slot> <live>". The home is the
process holding the session's actor (and its stream, when `live` is 1); the slot is that
process's task-id slot for it, which the name's owner puts in the task ids it mints.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.cluster.bus import Bus

# Returns the valid owner of KEYS[1], taking it for ARGV[1] when there is none (or the
# holder's liveness key, ARGV[3] .. holder, is gone) and ARGV[4] is "1".
_OWNER_OR_TAKE = """
local cur = redis.call('get', KEYS[1])
if cur and redis.call('exists', ARGV[3] .. cur) == 1 then return cur end
if ARGV[4] ~= '1' then return false end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# The same for every key in KEYS at once: their valid owners, in order (false: none).
_OWNERS_OR_TAKE = """
local out = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('get', key)
  if cur and redis.call('exists', ARGV[3] .. cur) == 1 then
    out[i] = cur
  elseif ARGV[4] == '1' then
    redis.call('set', key, ARGV[1], 'PX', ARGV[2])
    out[i] = ARGV[1]
  else
    out[i] = false
  end
end
return out
"""

# Renews every lease in KEYS still held by ARGV[1]; returns the ones that are not.
_RENEW = """
local lost = {}
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then
    redis.call('pexpire', key, ARGV[2])
  else
    table.insert(lost, key)
  end
end
return lost
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Home:
    process: str
    slot: int
    live: bool


class Leases:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        r = bus.redis
        self._owner_or_take = r.register_script(_OWNER_OR_TAKE)
        self._owners_or_take = r.register_script(_OWNERS_OR_TAKE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self.owned: set[str] = set()  # names this process holds

    def _key(self, name: str) -> str:
        return self._bus.key("lease", name)

    def owner(self, name: str, take: bool = False) -> str | None:
        """The live owner of `name`; with `take`, this process becomes it if there is none."""
        me = self._bus.process
        owner = self._owner_or_take(
            keys=[self._key(name)],
            args=[me, self._bus.ttl_ms, self._bus.key("alive", ""), "1" if take else "0"])
        if owner == me:
            self.owned.add(name)
        return owner or None

    def owners(self, names: list[str], take: bool = False) -> dict[str, str | None]:
        """`owner` for many names in one round trip."""
        if not names:
            return {}
        me = self._bus.process
        found = self._owners_or_take(
            keys=[self._key(n) for n in names],
            args=[me, self._bus.ttl_ms, self._bus.key("alive", ""), "1" if take else "0"])
        out = {name: (str(owner) if owner else None)
               for name, owner in zip(names, found, strict=True)}
        self.owned.update(name for name, owner in out.items() if owner == me)
        return out

    def renew(self) -> list[str]:
        """Renew every lease held; returns the names lost meanwhile (taken over)."""
        if not self.owned:
            return []
        names = sorted(self.owned)
        lost_keys = set(self._renew(keys=[self._key(n) for n in names],
                                    args=[self._bus.process, self._bus.ttl_ms]))
        lost = [n for n in names if self._key(n) in lost_keys]
        self.owned.difference_update(lost)
        return lost

    def release(self, name: str) -> None:
        self.owned.discard(name)
        self._release(keys=[self._key(name)], args=[self._bus.process])

    def release_all(self) -> None:
        for name in list(self.owned):
            self.release(name)


class Homes:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._key = bus.key("home")

    def set(self, session_id: str, slot: int, live: bool) -> None:
        self._bus.redis.hset(self._key, session_id,
                             f"{self._bus.process} {slot} {1 if live else 0}")

    def get(self, session_id: str) -> Home | None:
        return _parse(self._bus.redis.hget(self._key, session_id))

    def live_home(self, session_id: str) -> Home | None:
        """The session's home if that process is alive."""
        home = self.get(session_id)
        if home is None or (home.process != self._bus.process
                            and not self._bus.alive([home.process])):
            return None
        return home

    def all(self) -> dict[str, Home]:
        out: dict[str, Home] = {}
        for session_id, raw in self._bus.redis.hgetall(self._key).items():
            home = _parse(raw)
            if home is not None:
                out[str(session_id)] = home
        return out

    def forget(self, session_id: str, process: str) -> bool:
        """Delete the record if `process` is still the home; True if it was."""
        home = self.get(session_id)
        if home is None or home.process != process:
            return False
        return bool(self._bus.redis.hdel(self._key, session_id))


def _parse(raw: str | bytes | None) -> Home | None:
    if not raw:
        return None
    if isinstance(raw, bytes):  # the client decodes; the type stubs cannot know
        raw = raw.decode()
    try:
        process, slot, live = raw.split()
        return Home(process, int(slot), live == "1")
    except ValueError:
        return None
