"""The invariants of PROTOCOL.md's "Faults the hub survives", judged on a chaos run's record:
each check returns its violations, each naming the request or process at fault and the
faults that preceded it, so a reader can go from a line of the report to the hub's log
(requests carry their id: grep the hub logs for it)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.chaos.faults import ENGINE_KINDS, T0, Fault
from tests.chaos.load import Outcome
from tests.chaos.stack import LIVENESS_TTL_S, MAX_CONCURRENCY

if TYPE_CHECKING:
    from tests.chaos.stack import Stack
    from tests.chaos.watch import Excess

SLACK_S = LIVENESS_TTL_S + 2  # the invariants' allowance after a fault
# 503s that name a fault the client can act on (retry elsewhere, later): answers, not bugs.
FAULT_CODES = {"publisher_offline", "publisher_disconnected", "hub_busy", "shutting_down",
               "database_unavailable"}
# A request's own deadline firing: healthy requests here take under a second, so one answered
# by its timer waited on something a fault lost, and was not answered at the fault.
TIMER_CODES = {"infer_timeout", "stream_idle_timeout", "wake_timeout"}
KILLS = {"hub_kill", "worker_kill"}  # a connection cut by these is lost with its process

ANSWERED = "every request answered within its deadline + liveness_ttl_s + 2 s"
TIMER = "no request answered by its deadline's timer (answered within liveness_ttl_s + 2 s " \
        "of the fault)"
RIGHT = "no answer wrong (content = the backend's for that request; errors are fault codes)"
NO_500 = "no 500"
SLOTS = "no slot leaks: in-flight counts = tasks running, within liveness_ttl_s + 2 s of " \
        "the last fault; maxConcurrency never exceeded"
DRAIN = "a graceful stop moves names, never takes them down (no shutting_down from a " \
        "process that is not draining)"
PG_RELAY = "a PostgreSQL outage: requests to connected publishers are still relayed"
RECOVER = "served again: every request begun liveness_ttl_s + 2 s after a fault's end " \
          "(10 s for PostgreSQL's) and before the next is answered right"
ALIVE = "every hub process alive (but those the schedule stopped) and serving at the end"
TRACEBACK = "no traceback logged for an engine's outage (Redis, PostgreSQL)"
OTHER_TRACEBACK = "no traceback logged for any other fault"
ORDER = (ANSWERED, TIMER, RIGHT, NO_500, DRAIN, PG_RELAY, RECOVER, SLOTS, ALIVE, TRACEBACK,
         OTHER_TRACEBACK)
POSTGRES_KINDS = {"postgres_down", "postgres_blackhole"}
POSTGRES_RECOVERY_S = 10.0  # "everything recovers within 10 s" of the database's return


@dataclass
class Violation:
    invariant: str
    what: str  # the request, member or process, and what was seen
    after: list[Fault] = field(default_factory=list)  # the faults that preceded it

    def line(self) -> str:
        faults = ", ".join(f.describe() for f in self.after) or "no fault near it"
        return f"{self.what} [after: {faults}]"


def near(faults: Iterable[Fault], start: float, end: float) -> list[Fault]:
    """The faults whose effect may reach [start, end]: begun before its end, undone less
    than their allowance (SLACK_S; 10 s for PostgreSQL's) before its start."""
    return [f for f in faults if f.start <= end and (f.end or f.start) + _allowance(f) >= start]


def _allowance(fault: Fault) -> float:
    return POSTGRES_RECOVERY_S if fault.kind in POSTGRES_KINDS else SLACK_S


def check_requests(outcomes: list[Outcome], faults: list[Fault],
                   bound_s: float) -> list[Violation]:
    found: list[Violation] = []
    for o in outcomes:
        already = len(found)
        _check_request(o, faults, bound_s, found)
        # Served again: failed with no fault near it, and nothing above says why.
        if not _ok(o) and len(found) == already and o.start >= T0[0] and not near(
                faults, o.start, o.end if o.end is not None else time.time()):
            found.append(Violation(RECOVER, o.describe(), near_before(faults, o.start)))
    return found


def _ok(o: Outcome) -> bool:
    return o.finished and o.text == o.expected and o.code is None and o.error is None


def _check_request(o: Outcome, faults: list[Fault], bound_s: float,
                   found: list[Violation]) -> None:
    end = o.end if o.end is not None else time.time()
    after = near(faults, o.start, end)
    if o.end is None or o.elapsed > bound_s or (o.error or "").startswith("timeout"):
        found.append(Violation(ANSWERED, o.describe(), after))
        return
    if o.code in TIMER_CODES:
        found.append(Violation(TIMER, o.describe(), after))
    elif o.status == 500 or o.code == "internal_error":
        found.append(Violation(NO_500, o.describe(), after))
    elif o.code is not None and o.code not in FAULT_CODES:
        found.append(Violation(RIGHT, f"{o.describe()}: not a fault's code", after))
    elif o.error is not None:
        lost = [f for f in after if f.kind in KILLS and f.target.startswith(o.hub)
                and o.start <= f.start <= end]
        if not lost:  # not the death of the process it was on: an unanswered request
            found.append(Violation(ANSWERED, f"{o.describe()}: no HTTP answer", after))
    if o.code == "shutting_down" and not any(
            f.kind == "hub_term" and f.target == o.hub for f in after):
        found.append(Violation(DRAIN, o.describe(), after))
    if not _ok(o) and after and all(f.kind in POSTGRES_KINDS for f in after) and any(
            f.start <= o.start <= f.end for f in after):
        found.append(Violation(PG_RELAY, o.describe(), after))
    if o.text and not o.expected.startswith(o.text):
        found.append(Violation(RIGHT, f"{o.describe()}: got {o.text[:60]!r}, the backend "
                                      f"said {o.expected!r}", after))
    elif o.status == 200 and o.code is None and o.error is None and not _ok(o):
        found.append(Violation(RIGHT, f"{o.describe()}: ended as if complete after "
                                      f"{o.text!r}", after))


def near_before(faults: list[Fault], at: float) -> list[Fault]:
    """The last fault begun before `at`."""
    return [f for f in faults if f.start <= at][-1:]


@dataclass
class SlotReading:
    hub: str
    name: str
    member: str  # its label (pool-0..2, solo), or the session id when no publisher has it
    in_flight: int
    running: int  # at its backend


def read_slots(stack: Stack) -> tuple[list[SlotReading], list[str]]:
    """Every live hub's view of every member's in-flight count, next to what its backend
    runs; and the names some hub counts queued requests for."""
    readings: list[SlotReading] = []
    queued: list[str] = []
    running = {m.session_id(): m.backend.stats()["inflight"] for m in stack.members}
    for proc in stack.hubs:
        if not proc.alive():
            continue
        try:
            rows = proc.hub.get("/api/v1/llms", timeout=5).json()["llms"]
            state = proc.hub.get("/status/state", timeout=5).json()["llms"]
        except Exception as exc:  # noqa: BLE001 - a hub that cannot say: that is the reading
            readings.append(SlotReading(proc.label, "?", f"unreadable: {exc}", -1, 0))
            continue
        for row in rows:
            for m in row.get("members", []):
                member = stack.member_of_session(m["providerSessionId"])
                readings.append(SlotReading(
                    proc.label, row["name"], member.label if member else m["providerSessionId"],
                    m["inFlight"], running.get(m["providerSessionId"], 0)))
        queued += [f"{proc.label}:{r['name']}={r['queued']}" for r in state if r["queued"]]
    return readings, queued


def check_slots(stack: Stack, faults: list[Fault], quiet_since: float,
                excesses: dict[str, Excess]) -> list[Violation]:
    """With load stopped: within SLACK_S of `quiet_since` (the later of the last fault's end
    and the last request's), every hub's in-flight count for every member equals what its
    backend runs (0), and nothing is queued. Polled; the last reading is reported."""
    deadline = quiet_since + SLACK_S
    while True:
        readings, queued = read_slots(stack)
        wrong = [r for r in readings if r.in_flight != r.running]
        if (not wrong and not queued) or time.time() > deadline:
            break
        time.sleep(0.2)
    at = f"+{time.time() - quiet_since:.1f} s after the last fault and request"
    found = [Violation(SLOTS, f"{r.hub} counts {r.in_flight} in flight on {r.name} member "
                              f"{r.member}; its backend runs {r.running} ({at})", faults[-3:])
             for r in wrong]
    found += [Violation(SLOTS, f"queued with no load: {q} ({at})", faults[-3:]) for q in queued]
    for member in stack.members:
        most = member.backend.stats()["max_inflight"]
        if most > MAX_CONCURRENCY:
            seen = excesses.get(member.label)
            when = (f", first seen at +{seen.at - T0[0]:.1f} s" if seen else "")
            found.append(Violation(
                SLOTS, f"{member.label}'s backend ran {most} at once (maxConcurrency "
                       f"{MAX_CONCURRENCY}){when}",
                near(faults, seen.at - 1, seen.at) or near_before(faults, seen.at)
                if seen else []))
    return found


def check_processes(stack: Stack, faults: list[Fault]) -> list[Violation]:
    found: list[Violation] = []
    for proc in stack.hubs:
        for note in proc.restarts:
            found.append(Violation(ALIVE, f"{proc.label}: {note}", faults[-1:]))
        if not proc.alive():
            if not proc.expected_down:
                code = proc.hub.proc.returncode if proc.hub.proc else None
                found.append(Violation(ALIVE, f"{proc.label} exited ({code}) by itself",
                                       _before(faults, _exit_time(proc.hub.logs()))))
            continue
        deadline = time.time() + 10  # "everything recovers within 10 s"
        while True:
            try:
                r = proc.hub.get("/healthz", timeout=5)
                status, body = r.status_code, r.text
            except Exception as exc:  # noqa: BLE001 - no answer at all
                status, body = 0, str(exc)
            workers = len(proc.worker_pids())
            if (status == 200 and workers == proc.workers) or time.time() > deadline:
                break
            time.sleep(0.2)
        if status != 200:
            found.append(Violation(ALIVE, f"{proc.label} /healthz {status} {body[:200]}",
                                   faults[-2:]))
        if workers != proc.workers:
            found.append(Violation(ALIVE, f"{proc.label} runs {workers} of {proc.workers} "
                                          "workers", faults[-2:]))
    return found


STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)")


def _stamp(line: str) -> float | None:
    match = STAMP.match(line)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1).replace("T", " "), "%Y-%m-%d %H:%M:%S"))


def _exit_time(log: str) -> float:
    stamps = [s for s in map(_stamp, log.splitlines()) if s is not None]
    return stamps[-1] if stamps else time.time()


def _before(faults: list[Fault], at: float) -> list[Fault]:
    return [f for f in faults if f.start <= at + 1][-2:]


@dataclass
class Traceback:
    hub: str
    at: float  # the last timestamped line before it (the line that logged it)
    logged: str  # that line
    exception: str  # the traceback's last line


def tracebacks(logs: dict[str, str]) -> list[Traceback]:
    found: list[Traceback] = []
    for hub, text in logs.items():
        lines = text.splitlines()
        at, logged = 0.0, ""
        i = 0
        while i < len(lines):
            stamp = _stamp(lines[i])
            if stamp is not None:
                at, logged = stamp, lines[i]
            if lines[i].lstrip().startswith("Traceback (most recent call last)"):
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j]
                                          or lines[j].startswith(("During handling",
                                                                  "The above exception",
                                                                  "Traceback"))):
                    j += 1
                exception = lines[j] if j < len(lines) else "(log ends)"
                found.append(Traceback(hub, at, logged[:200], exception[:200]))
                i = j
            i += 1
    return found


UNHANDLED = "unhandled error on "  # tether/http/errors.py logs each 500 it renders so


def check_logged_500s(logs: dict[str, str], faults: list[Fault]) -> list[Violation]:
    """A 500 to any caller (a publisher's heartbeat or result too), as the hub logs it."""
    found: list[Violation] = []
    for hub, text in logs.items():
        for line in text.splitlines():
            if UNHANDLED in line and (at := _stamp(line)) is not None:
                route = line.split(UNHANDLED, 1)[1][:120]
                found.append(Violation(NO_500, f"{hub} +{at - T0[0]:.0f} s: 500 on {route}",
                                       near(faults, at - 1, at + 1)))
    return found


def check_tracebacks(logs: dict[str, str], faults: list[Fault]) -> list[Violation]:
    found: list[Violation] = []
    for tb in tracebacks(logs):
        # Log stamps have whole seconds: a second of slack either side.
        after = near(faults, tb.at - 1, tb.at + 1)
        # An engine's outage explains a traceback up to liveness_ttl_s + 2 s after it (a
        # drain or a restart in the 10 s PostgreSQL gets to recover does not).
        engine = any(f.kind in ENGINE_KINDS and f.end + SLACK_S >= tb.at - 1 for f in after)
        found.append(Violation(TRACEBACK if engine else OTHER_TRACEBACK,
                               f"{tb.hub} +{tb.at - T0[0]:.0f} s: {tb.exception} "
                               f"(logged by: {tb.logged})", after))
    return found


def kind_of(o: Outcome) -> str:
    if o.code:
        return o.code
    if o.error:
        return o.error.split(":")[0]
    if o.end is None:
        return "unanswered"
    return "ok" if o.finished and o.text == o.expected else "wrong"


def timeline(outcomes: list[Outcome], faults: list[Fault]) -> list[str]:
    starts = [T0[0]] + [f.start for f in faults] + [float("inf")]
    lines = []
    for i, fault in enumerate([None, *faults]):
        mine = [o for o in outcomes if starts[i] <= o.start < starts[i + 1]]
        counts = {name: Counter(kind_of(o) for o in mine if o.name == name)
                  for name in ("pool", "solo")}
        what = (f"+{fault.start - T0[0]:.1f} s {fault.kind} {fault.target} (held "
                f"{fault.end - fault.start:.1f} s{', ' + fault.note if fault.note else ''})"
                if fault else "+0.0 s no fault (baseline)")
        lines.append(f"    {what}: " + "; ".join(
            f"{name} {dict(c.most_common())}{_unavailable(mine, name)}"
            for name, c in counts.items()))
    return lines


def _unavailable(outcomes: list[Outcome], name: str) -> str:
    """How long requests for `name` failed: from the first failed one's start to the last
    failed one's end (served ones may lie between)."""
    failed = [o for o in outcomes if o.name == name and kind_of(o) != "ok"]
    if not failed:
        return ""
    span = max(o.end or o.start for o in failed) - min(o.start for o in failed)
    return f" (failing over {span:.1f} s)"


def report(title: str, outcomes: list[Outcome], faults: list[Fault],
           violations: list[Violation], detail: int = 12) -> str:
    """The run in a few lines, then each invariant: held, or its violations by the kinds
    of fault before them, and the first `detail` of them in full."""
    answers = Counter(o.code or ("ok" if o.finished else o.error and o.error.split(":")[0]
                                 or "unanswered") for o in outcomes)
    lines = [title, f"requests: {len(outcomes)}; outcomes: {dict(answers.most_common())}",
             "outcomes by the fault before them (begun from that fault's start to the "
             "next's):", *timeline(outcomes, faults)]
    for invariant in ORDER:
        mine = [v for v in violations if v.invariant == invariant]
        if not mine:
            lines.append(f"HELD   {invariant}")
            continue
        by_fault = Counter("+".join(sorted({f.kind for f in v.after})) or "none" for v in mine)
        lines.append(f"FAILED {invariant}: {len(mine)} (by the faults before them: "
                     f"{dict(by_fault.most_common())})")
        lines += [f"    - {v.line()}" for v in mine[:detail]]
        if len(mine) > detail:
            lines.append(f"    … and {len(mine) - detail} more")
    return "\n".join(lines)


def check_serving(stack: Stack, bound_s: float) -> list[Violation]:
    """At the end, every live process answers each name, right."""
    import openai

    from tests.chaos.load import CHUNKS, expected_text

    found: list[Violation] = []
    for proc in stack.hubs:
        if not proc.alive():
            continue
        client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0,
                               timeout=bound_s)
        for name in ("pool", "solo"):
            messages = [{"role": "user", "content": f"after the faults, {proc.label} {name}"}]
            try:
                answer = client.chat.completions.create(
                    model=name, messages=messages,  # type: ignore[arg-type]
                    extra_body={"demo_chunks": CHUNKS})
                text = answer.choices[0].message.content
            except openai.APIError as exc:
                text = f"{type(exc).__name__}: {str(exc)[:200]}"
            if text != expected_text(messages):
                found.append(Violation(ALIVE, f"{proc.label} does not serve {name} at the end:"
                                              f" {text!r}", []))
    return found
