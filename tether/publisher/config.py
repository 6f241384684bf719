"""The publisher's configuration: a TOML file, or the one-backend command-line shortcut."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.names import LLM_NAME_PATTERN

# Without `session_file`, the file is named after what is published (hub URL and backend
# names): two different publishers on one machine never share a session id by accident.
SESSION_DIR = "~/.local/state/tether"
MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")


class PublisherConfigError(Exception):
    """Names the file and key at fault; `tether publish` exits 2 with it."""


@dataclass(frozen=True)
class Recipe:
    """How to wake or put to sleep a backend: exactly one of the three forms."""

    command: tuple[str, ...] | None = None
    http: dict[str, Any] | None = None
    wol: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.command:
            return f"command {self.command[0]}"
        if self.http:
            return f"http {self.http.get('method', 'POST')} {self.http['url']}"
        return f"wol {self.wol['mac'] if self.wol else '?'}"


@dataclass(frozen=True)
class BackendConfig:
    name: str
    model: str
    base_url: str
    type: str = "openai"
    api_key_env: str | None = None
    tier: str = "fast"
    description: str = ""
    max_concurrency: int = 4
    wake_timeout_s: float = 120.0
    idle_sleep_s: float | None = None
    wake: Recipe | None = None
    sleep: Recipe | None = None

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class PublisherConfig:
    hub: str
    backends: tuple[BackendConfig, ...]
    key_env: str | None = None
    session_file: str | None = None
    probe_interval_s: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)
    drain_timeout_s: float = 30.0  # at SIGTERM, how long running tasks may go on

    @property
    def key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None

    @property
    def session_path(self) -> Path:
        if self.session_file is not None:
            return Path(os.path.expanduser(self.session_file))
        published = "\n".join([self.hub, *sorted(b.name for b in self.backends)])
        digest = hashlib.sha256(published.encode()).hexdigest()[:16]
        return Path(os.path.expanduser(SESSION_DIR)) / f"publisher-{digest}.session"


_TOP = {"hub", "key_env", "session_file", "probe_interval_s", "backends", "drain_timeout_s"}
_BACKEND = {"name", "type", "model", "base_url", "api_key_env", "tier", "description",
            "max_concurrency", "wake_timeout_s", "idle_sleep_s", "wake", "sleep"}


def _fail(where: str, message: str) -> PublisherConfigError:
    return PublisherConfigError(f"{where}: {message}")


def _string(data: dict, key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(where, f"'{key}' is required")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(where, f"'{key}' must be a non-empty string")
    return value


def _number(data: dict, key: str, where: str, default: Any, minimum: float = 0) -> Any:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise _fail(where, f"'{key}' must be a number >= {minimum}")
    return value


def parse_recipe(data: Any, where: str) -> Recipe:
    if not isinstance(data, dict):
        raise _fail(where, "must be a table with one of command, http, wol")
    forms = [k for k in ("command", "http", "wol") if k in data]
    if len(forms) != 1 or set(data) - {"command", "http", "wol"}:
        raise _fail(where, "needs exactly one of command = [...], http = {...}, wol = {...}")
    form = forms[0]
    value = data[form]
    if form == "command":
        if (not isinstance(value, list) or not value
                or not all(isinstance(a, str) for a in value)):
            raise _fail(f"{where}.command", "must be a non-empty list of strings (argv)")
        return Recipe(command=tuple(value))
    if form == "http":
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise _fail(f"{where}.http", "needs url (and optional method, body)")
        method = value.get("method", "POST")
        if not isinstance(method, str):
            raise _fail(f"{where}.http.method", "must be a string")
        return Recipe(http={"method": method.upper(), "url": value["url"],
                            "body": value.get("body")})
    if not isinstance(value, dict) or not MAC.match(str(value.get("mac", ""))):
        raise _fail(f"{where}.wol.mac", "must be a MAC address like aa:bb:cc:dd:ee:ff")
    port = value.get("port", 9)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise _fail(f"{where}.wol.port", "must be a UDP port number")
    return Recipe(wol={"mac": value["mac"], "broadcast": value.get("broadcast",
                                                                    "255.255.255.255"),
                       "port": port})


def parse_backend(data: Any, where: str) -> BackendConfig:
    if not isinstance(data, dict):
        raise _fail(where, "must be a table")
    unknown = set(data) - _BACKEND
    if unknown:
        raise _fail(where, f"unknown key '{sorted(unknown)[0]}'")
    name = _string(data, "name", where, required=True)
    assert name is not None
    if not re.match(LLM_NAME_PATTERN, name):
        raise _fail(f"{where}.name", f"{name!r} is not a valid Llm name ({LLM_NAME_PATTERN})")
    base_url = _string(data, "base_url", where, required=True)
    assert base_url is not None
    if not base_url.startswith(("http://", "https://")):
        raise _fail(f"{where}.base_url", "must be an http(s) URL")
    concurrency = _number(data, "max_concurrency", where, 4, minimum=1)
    if not isinstance(concurrency, int):
        raise _fail(f"{where}.max_concurrency", "must be a whole number")
    idle = _number(data, "idle_sleep_s", where, None)
    wake = parse_recipe(data["wake"], f"{where}.wake") if "wake" in data else None
    sleep = parse_recipe(data["sleep"], f"{where}.sleep") if "sleep" in data else None
    if idle is not None and sleep is None:
        raise _fail(f"{where}.idle_sleep_s", "needs a [backends.sleep] recipe")
    return BackendConfig(
        name=name,
        model=_string(data, "model", where, required=True) or "",
        base_url=base_url.rstrip("/"),
        type=_string(data, "type", where) or "openai",
        api_key_env=_string(data, "api_key_env", where),
        tier=_string(data, "tier", where) or "fast",
        description=data.get("description", "") if isinstance(data.get("description", ""),
                                                              str) else "",
        max_concurrency=concurrency,
        wake_timeout_s=float(_number(data, "wake_timeout_s", where, 120.0)),
        idle_sleep_s=float(idle) if idle is not None else None,
        wake=wake,
        sleep=sleep,
    )


def parse(data: dict[str, Any], source: str) -> PublisherConfig:
    unknown = set(data) - _TOP
    if unknown:
        raise _fail(source, f"unknown key '{sorted(unknown)[0]}'")
    hub = _string(data, "hub", source, required=True)
    assert hub is not None
    if not hub.startswith(("http://", "https://")):
        raise _fail(f"{source}: hub", "must be an http(s) URL")
    raw = data.get("backends")
    if not isinstance(raw, list) or not raw:
        raise _fail(source, "needs at least one [[backends]] table")
    backends = tuple(parse_backend(b, f"{source}: backends[{i}]") for i, b in enumerate(raw))
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise _fail(source, "two backends share one name")
    return PublisherConfig(
        hub=hub.rstrip("/"),
        backends=backends,
        key_env=_string(data, "key_env", source),
        session_file=_string(data, "session_file", source),
        probe_interval_s=float(_number(data, "probe_interval_s", source, 5.0)),
        drain_timeout_s=float(_number(data, "drain_timeout_s", source, 30.0)),
    )


def load(path: str | os.PathLike[str]) -> PublisherConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PublisherConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PublisherConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, str(path))
