"""Wake and sleep recipes: run a command, call an HTTP endpoint, or send a Wake-on-LAN packet.

A command's output (stdout and stderr, merged) is read line by line into the publisher's log
for as long as anything holds the pipe: a backend run in the foreground by its wake recipe
writes at every request, and a pipe nobody reads fills at 64 KiB and then blocks it in
`write` (it stops answering). What failed is said to the hub in a short message ("the wake
recipe exited 1"); the output, which can hold paths and tracebacks of this machine, stays in
the log, where the operator looks.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from typing import IO, Any

import urllib3

from tether.publisher.config import Recipe

log = logging.getLogger("tether.publisher.recipe")

# The log stays bounded whatever a command writes: a line is cut at this many characters,
# and past LINES_PER_WINDOW lines in WINDOW_S the rest of that window are only counted.
LINE_MAX = 1000
LINES_PER_WINDOW = 1000  # llama.cpp writes ~420 lines as it starts, ~8 per request
WINDOW_S = 10.0


class RecipeFailed(Exception):
    """A recipe did not do its job. The message is short and fit for the hub's clients;
    details (output, addresses, errors of this machine) went to the publisher's log."""


def magic_packet(mac: str) -> bytes:
    """6 x 0xFF, then the MAC 16 times (the Wake-on-LAN frame)."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise RecipeFailed(f"bad MAC address {mac!r}")
    return b"\xff" * 6 + raw * 16


def send_wol(spec: dict[str, Any]) -> None:
    packet = magic_packet(spec["mac"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(packet, (spec.get("broadcast", "255.255.255.255"), int(spec.get("port", 9))))


def call_http(spec: dict[str, Any], timeout: float, what: str = "recipe",
              source: str = "recipe") -> None:
    body = spec.get("body")
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    try:
        response = urllib3.request(
            spec.get("method", "POST"), spec["url"], body=data,
            headers={"Content-Type": "application/json"} if data is not None else None,
            timeout=urllib3.Timeout(total=timeout), retries=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        log.warning("%s: the call to %s failed: %s", source, spec["url"], exc)
        raise RecipeFailed(f"the {what}'s HTTP call failed (unreachable)") from None
    if not 200 <= response.status < 300:
        log.warning("%s: %s answered %d", source, spec["url"], response.status)
        raise RecipeFailed(f"the {what}'s HTTP call answered {response.status}")


def start(recipe: Recipe, timeout: float, what: str = "recipe",
          llm: str = "") -> subprocess.Popen | None:
    """Begin a recipe (`what` names it in messages, e.g. "wake recipe"; `llm` is the backend
    it serves, for the log). A command may keep running (a backend in the foreground): its
    process is returned for the caller to watch, its output read into the log; http and wol
    complete here."""
    source = f"{what} of {llm}" if llm else what
    if recipe.command:
        try:
            proc = subprocess.Popen(
                list(recipe.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            log.warning("%s could not be started: %s", source, exc)
            raise RecipeFailed(f"the {what} could not be started") from None
        assert proc.stdout is not None
        # A thread, so plain-thread callers (tests) work too; under gevent, a greenlet.
        threading.Thread(target=_log_output, args=(proc.stdout, source), daemon=True,
                         name=f"output of the {source}").start()
        return proc
    if recipe.http:
        call_http(recipe.http, timeout, what, source)
    elif recipe.wol:
        send_wol(recipe.wol)
    return None


def _log_output(output: IO[bytes], source: str) -> None:
    """Every line the command (and whatever it started) writes, until the last holder of the
    pipe closes it: for a backend run in the foreground, as long as it runs."""
    window_start, logged, dropped = time.monotonic(), 0, 0
    with output:
        while True:
            try:
                line = output.readline(LINE_MAX + 1)
            except (OSError, ValueError):  # closed under us: nothing more to read
                break
            if not line:
                break
            if len(line) > LINE_MAX and not line.endswith(b"\n"):
                _skip_rest_of_line(output)
            now = time.monotonic()
            if now - window_start >= WINDOW_S:
                if dropped:
                    log.warning("%s: %d lines of output not logged (over %d in %g s)",
                                source, dropped, LINES_PER_WINDOW, WINDOW_S)
                window_start, logged, dropped = now, 0, 0
            if logged >= LINES_PER_WINDOW:
                dropped += 1
                continue
            logged += 1
            text = line[:LINE_MAX].decode(errors="replace").rstrip()
            if text:
                log.info("%s: %s", source, text)


def _skip_rest_of_line(output: IO[bytes]) -> None:
    while True:
        rest = output.readline(65536)
        if not rest or rest.endswith(b"\n"):
            return


def failed_exit(proc: subprocess.Popen, what: str = "recipe") -> str | None:
    """Why a recipe command failed, once it has exited non-zero; None otherwise."""
    code = proc.poll()
    if code is None or code == 0:
        return None
    if code < 0:
        return f"the {what} was killed by signal {-code}"
    return f"the {what} exited {code}"


def run(recipe: Recipe, timeout: float, what: str = "recipe", llm: str = "") -> None:
    """Run a recipe to its end (sleep recipes): a command must exit 0 within `timeout`."""
    proc = start(recipe, timeout, what, llm)
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RecipeFailed(f"the {what} did not finish within {timeout:g} s") from None
    reason = failed_exit(proc, what)
    if reason:
        raise RecipeFailed(reason)
