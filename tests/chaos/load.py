"""Bounded load for a chaos run: 8 client threads, each sending one request at a time with
the official `openai` SDK (no retries, a timeout at the invariant's bound), until stopped.

Threads 0-5 ask the pool, 6-7 the single publisher's name; each thread alternates streamed
and plain requests and sends to the hub processes the schedule has not taken down, in turn
(as a load balancer that stopped sending to a process it saw go). Every request's content
is unique and carries its own `X-Request-Id` (the hub puts it on its log lines), and the
demo backend's answer is a function of the content, so each answer can be checked against
what the backend says for that request and no other.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai

from tether.tools.demo_backend import DemoBackend

if TYPE_CHECKING:
    from tests.chaos.stack import Stack

CLIENTS = 8
POOL_CLIENTS = 6
CHUNKS = 6
# The backend's pause: per chunk when streamed, once when not (a request takes ~0.3 s).
STREAM_DELAY_S = 0.05
PLAIN_DELAY_S = 0.3


@dataclass
class Outcome:
    """One request, from send to its end (or to the end of the run, for one never ended)."""

    rid: str
    hub: str  # the process's label (huba, hubb)
    name: str
    stream: bool
    expected: str
    start: float  # time.time()
    end: float | None = None
    status: int | None = None  # the HTTP status (a stream that began: 200)
    code: str | None = None  # the error's code, from a status or an error event
    error: str | None = None  # an exception that is not an HTTP answer: its type and text
    text: str = ""  # what the client received, joined
    finished: bool = False  # a complete answer (a plain body, or a stream's finish_reason)

    @property
    def elapsed(self) -> float:
        return (self.end if self.end is not None else time.time()) - self.start

    def describe(self) -> str:
        how = "stream" if self.stream else "plain"
        what = (f"{self.status} {self.code}" if self.code else
                self.error or (f"{self.status} {'complete' if self.finished else 'cut'}"))
        ended = ("after" if self.end else "unanswered after") + f" {self.elapsed:.1f} s"
        return f"{self.rid} ({how} {self.name} via {self.hub}) {what}, {ended}"


def expected_text(messages: list[dict[str, str]]) -> str:
    """What the demo backend answers to these messages (its words are a hash of them)."""
    return " ".join(DemoBackend()._words({"messages": messages, "demo_chunks": CHUNKS}))


@dataclass
class Load:
    stack: Stack
    bound_s: float  # the client's timeout: the invariant's bound on an answer
    tag: str = "run"
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(CLIENTS)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending; wait for the requests still out, up to the bound (one never
        answered stays in the outcomes with no end)."""
        self._stop.set()
        deadline = time.monotonic() + self.bound_s + 5
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.outcomes

    def served(self, since: float, name: str | None = None) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.start >= since and o.finished
                       and (name is None or o.name == name))

    def _run(self, i: int) -> None:
        name = "pool" if i < POOL_CLIENTS else "solo"
        clients: dict[str, openai.OpenAI] = {}
        n = 0
        while not self._stop.is_set():
            hubs = [h for h in self.stack.hubs if h.up]
            if not hubs:
                time.sleep(0.1)  # every process down at once: wait for one
                continue
            hub = hubs[(n + i) % len(hubs)]
            client = clients.get(hub.url)
            if client is None:
                client = clients[hub.url] = openai.OpenAI(
                    base_url=f"{hub.url}/v1", api_key="unused", max_retries=0,
                    timeout=openai.Timeout(self.bound_s, connect=5.0))
            rid = f"chaos-{self.tag}-{i}-{n}"
            messages = [{"role": "user", "content": f"{rid}: say something"}]
            outcome = Outcome(rid, hub.label, name, stream=n % 2 == 1,
                              expected=expected_text(messages), start=time.time())
            with self._lock:
                self.outcomes.append(outcome)
            n += 1
            _ask(client, outcome, messages)
            outcome.end = time.time()


def _ask(client: openai.OpenAI, outcome: Outcome, messages: list[dict[str, str]]) -> None:
    headers = {"X-Request-Id": outcome.rid}
    try:
        if outcome.stream:
            stream = client.chat.completions.create(
                model=outcome.name, messages=messages, stream=True,  # type: ignore[arg-type]
                extra_headers=headers,
                extra_body={"demo_chunks": CHUNKS, "demo_delay_s": STREAM_DELAY_S})
            outcome.status = 200
            for chunk in stream:
                for choice in chunk.choices:
                    outcome.text += choice.delta.content or ""
                    if choice.finish_reason:
                        outcome.finished = True
        else:
            answer = client.chat.completions.create(
                model=outcome.name, messages=messages,  # type: ignore[arg-type]
                extra_headers=headers,
                extra_body={"demo_chunks": CHUNKS, "demo_delay_s": PLAIN_DELAY_S})
            outcome.status = 200
            outcome.text = answer.choices[0].message.content or ""
            outcome.finished = answer.choices[0].finish_reason == "stop"
    except openai.APIStatusError as exc:
        outcome.status = exc.status_code
        outcome.code = _code(exc.body) or f"(no code: {str(exc)[:120]})"
    except openai.APITimeoutError:
        outcome.error = "timeout (the client's, at the bound)"
    except openai.APIError as exc:  # an error event in a stream, or no connection
        code = getattr(exc, "code", None)
        if code:
            outcome.code = str(code)
        else:
            outcome.error = f"{type(exc).__name__}: {str(exc)[:160]}"
    except Exception as exc:  # noqa: BLE001 - a connection cut mid-stream, and the like
        outcome.error = f"{type(exc).__name__}: {str(exc)[:160]}"


def _code(body: Any) -> str | None:
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            body = body["error"]
        code = body.get("code")
        return str(code) if code else None
    return None
