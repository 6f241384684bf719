"""Wake and sleep recipes: run a command, call an HTTP endpoint, or send a Wake-on-LAN packet."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import urllib3

from tether.publisher.config import Recipe


class RecipeFailed(Exception):
    pass


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


def call_http(spec: dict[str, Any], timeout: float) -> None:
    body = spec.get("body")
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    try:
        response = urllib3.request(
            spec.get("method", "POST"), spec["url"], body=data,
            headers={"Content-Type": "application/json"} if data is not None else None,
            timeout=urllib3.Timeout(total=timeout), retries=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        raise RecipeFailed(f"{spec['url']} unreachable: {exc}") from None
    if not 200 <= response.status < 300:
        raise RecipeFailed(f"{spec['url']} answered {response.status}")


def start(recipe: Recipe, timeout: float) -> subprocess.Popen | None:
    """Begin a recipe. A command may keep running (a backend in the foreground): its process
    is returned for the caller to watch; http and wol complete here."""
    if recipe.command:
        try:
            return subprocess.Popen(
                list(recipe.command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise RecipeFailed(f"cannot run {recipe.command[0]!r}: {exc}") from None
    if recipe.http:
        call_http(recipe.http, timeout)
    elif recipe.wol:
        send_wol(recipe.wol)
    return None


def failed_exit(proc: subprocess.Popen) -> str | None:
    """The reason a recipe command failed, once it has exited non-zero; None otherwise."""
    code = proc.poll()
    if code is None or code == 0:
        return None
    tail = proc.stderr.read()[-500:].decode(errors="replace").strip() if proc.stderr else ""
    return f"command exited {code}" + (f": {tail}" if tail else "")


def run(recipe: Recipe, timeout: float) -> None:
    """Run a recipe to its end (sleep recipes): a command must exit 0 within `timeout`."""
    proc = start(recipe, timeout)
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RecipeFailed(f"command did not finish within {timeout:g} s") from None
    reason = failed_exit(proc)
    if reason:
        raise RecipeFailed(reason)
