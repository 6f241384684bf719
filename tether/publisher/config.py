"""The publisher's configuration: a TOML file, or the one-backend command-line shortcut.

Each key is declared once, below: its dataclass field carries the default and its JSON
Schema (tether.common.config_schema); validation and the error messages come from that."""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.common.config_schema import REQUIRED, check, object_schema, setting
from tether.common.logs import LOG_FORMAT_SCHEMA, LOG_LEVEL_SCHEMA
from tether.common.names import LLM_NAME_PATTERN

# Without `session_file`, the file is named after what is published (hub URL and backend
# names): two different publishers on one machine never share a session id by accident.
SESSION_DIR = "~/.local/state/tether"
MAC_PATTERN = r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"


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


_TEXT = {"type": "string", "minLength": 1, "x-message": "must be a non-empty string"}
_URL = {"type": "string", "pattern": "^https?://", "x-message": "must be an http(s) URL"}
_SECONDS = {"type": "number", "minimum": 0, "x-message": "must be a number >= 0"}
# One hub URL, or several (the processes of one cluster, docs/protocol.md "Several hub
# processes"): each keyword below applies to one of the two forms only.
_HUBS = {"type": ["string", "array"], "pattern": "^https?://", "items": _URL, "minItems": 1,
         "uniqueItems": True,
         "x-messages": {"type": "must be an http(s) URL or a list of them",
                        "pattern": "must be an http(s) URL",
                        "minItems": "must list at least one hub URL",
                        "uniqueItems": "lists one URL twice"},
         "x-required": "'hub' is required (a URL, or a list of URLs)"}

RECIPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                    "x-message": "must be a non-empty list of strings (argv)"},
        "http": {"type": "object",
                 "properties": {"url": {"type": "string", "x-message": "must be a URL",
                                        "x-required": "needs url (and optional method, body)"},
                                "method": {"type": "string", "x-message": "must be a string"}},
                 "required": ["url"], "x-message": "needs url (and optional method, body)"},
        "wol": {"type": "object",
                "properties": {
                    "mac": {"type": "string", "pattern": MAC_PATTERN,
                            "x-required": "needs mac, a MAC address like aa:bb:cc:dd:ee:ff",
                            "x-message": "must be a MAC address like aa:bb:cc:dd:ee:ff"},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                             "x-message": "must be a UDP port number"},
                    "broadcast": {"type": "string", "x-message": "must be an address"}},
                "required": ["mac"], "x-message": "must be a table with mac (and port, broadcast)"},
    },
    "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "x-message": "needs exactly one of command = [...], http = {...}, wol = {...}",
}


# A name prefix: what precedes a discovered model's id must itself start like a name.
PREFIX_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,63})?$"


@dataclass(frozen=True)
class BackendConfig:
    base_url: str = setting(REQUIRED, _URL)
    # Neither name nor model: the backend publishes every model it lists (Discovery).
    name: str = setting("", {"type": "string", "pattern": LLM_NAME_PATTERN,
                             "x-message": f"must be a valid Llm name ({LLM_NAME_PATTERN})"})
    model: str = setting("", _TEXT)
    # Put before each discovered model's id: two machines with one model stay apart.
    prefix: str = setting("", {"type": "string", "pattern": PREFIX_PATTERN,
                               "x-message": "must be empty or start a valid Llm name "
                                            "(letters, digits, . _ : -)"})
    type: str = setting("openai", _TEXT)
    api_key_env: str | None = setting(None, _TEXT)
    tier: str = setting("fast", _TEXT)
    description: str = setting("", {"type": "string", "x-message": "must be a string"})
    # The hub never sends more at once (its maxConcurrency, 1 to 4096).
    max_concurrency: int = setting(4, {"type": "integer", "minimum": 1, "maximum": 4096,
                                       "x-message": "must be a whole number, 1 to 4096"})
    # Share the name with other publishers (docs/protocol.md, Pools).
    pool: bool = setting(False, {"type": "boolean", "x-message": "must be true or false"})
    wake_timeout_s: float = setting(120.0, _SECONDS)
    idle_sleep_s: float | None = setting(None, _SECONDS)
    wake: Recipe | None = setting(None, RECIPE_SCHEMA)
    sleep: Recipe | None = setting(None, RECIPE_SCHEMA)

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def discovers(self) -> bool:
        """Given without a model: it publishes what it lists (docs/protocol.md, Discovery)."""
        return not self.name

    @property
    def key(self) -> str:
        """What names the backend in logs and in the publisher: its Llm name, or for one
        that discovers, its prefix and URL."""
        return self.name or f"{self.prefix}*@{self.base_url}"


@dataclass(frozen=True)
class PublisherConfig:
    # Tried in this order at start; on a loss the publisher moves to the next (agent.py).
    hub: tuple[str, ...] = setting(REQUIRED, _HUBS)
    backends: tuple[BackendConfig, ...] = setting(REQUIRED, {
        "type": "array", "minItems": 1, "items": object_schema(
            BackendConfig, required=("base_url",),
            extra_keywords={"type": "object", "x-message": "must be a table",
                            "dependentRequired": {"idle_sleep_s": ["sleep"]},
                            "x-messages": {"dependentRequired":
                                           "idle_sleep_s needs a [backends.sleep] recipe"}}),
        "x-message": "needs at least one [[backends]] table",
        "x-required": "needs at least one [[backends]] table"})
    key_env: str | None = setting(None, _TEXT)
    session_file: str | None = setting(None, _TEXT)
    probe_interval_s: float = setting(5.0, _SECONDS)
    # at SIGTERM, how long running tasks may go on
    drain_timeout_s: float = setting(30.0, _SECONDS)
    log_level: str = setting("info", LOG_LEVEL_SCHEMA)  # info: a line per task
    log_format: str = setting("text", LOG_FORMAT_SCHEMA)  # json: one object per line
    # Results on one NDJSON upload per session (docs/protocol.md, `_provider-results`);
    # false: one POST per result, as against a hub without the channel (A/B measurement).
    result_channel: bool = setting(True, {"type": "boolean",
                                          "x-message": "must be true or false"})

    @property
    def key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None

    @property
    def session_path(self) -> Path:
        if self.session_file is not None:
            return Path(os.path.expanduser(self.session_file))
        # One hub hashes as it did when `hub` could only be one URL: its file is kept.
        published = "\n".join([*self.hub, *sorted(b.key for b in self.backends)])
        digest = hashlib.sha256(published.encode()).hexdigest()[:16]
        return Path(os.path.expanduser(SESSION_DIR)) / f"publisher-{digest}.session"


SCHEMA = object_schema(PublisherConfig, required=("hub", "backends"))


def _recipe(data: dict[str, Any] | None) -> Recipe | None:
    if data is None:
        return None
    if "command" in data:
        return Recipe(command=tuple(data["command"]))
    if "http" in data:
        http = data["http"]
        return Recipe(http={"method": http.get("method", "POST").upper(), "url": http["url"],
                            "body": http.get("body")})
    wol = data["wol"]
    return Recipe(wol={"mac": wol["mac"], "broadcast": wol.get("broadcast", "255.255.255.255"),
                       "port": int(wol.get("port", 9))})


def _backend(data: dict[str, Any]) -> BackendConfig:
    idle = data.get("idle_sleep_s")
    return BackendConfig(
        name=data.get("name", ""),
        model=data.get("model", ""),
        base_url=data["base_url"].rstrip("/"),
        prefix=data.get("prefix", ""),
        type=data.get("type", "openai"),
        api_key_env=data.get("api_key_env"),
        tier=data.get("tier", "fast"),
        description=data.get("description", ""),
        # int(): JSON Schema counts 2.0 as an integer; a semaphore wants an int
        max_concurrency=int(data.get("max_concurrency", 4)),
        pool=data.get("pool", False),
        wake_timeout_s=float(data.get("wake_timeout_s", 120.0)),
        idle_sleep_s=float(idle) if idle is not None else None,
        wake=_recipe(data.get("wake")),
        sleep=_recipe(data.get("sleep")),
    )


def parse(data: dict[str, Any], source: str) -> PublisherConfig:
    """The config in `data`, or PublisherConfigError listing every error, one per line."""
    errors = check(SCHEMA, data, lambda where, what: (
        f"{source}: {where}: {what}" if where else f"{source}: {what}"))
    backends = data.get("backends")
    tables = [b for b in backends if isinstance(b, dict)] if isinstance(backends, list) else []
    names = [b.get("name") for b in tables if b.get("name")]
    if len(set(names)) != len(names):
        errors.append(f"{source}: two backends share one name")
    for i, b in enumerate(tables):
        if bool(b.get("name")) != bool(b.get("model")):
            errors.append(f"{source}: backends[{i}]: give name and model together, or neither "
                          "(to publish every model the backend lists)")
        elif b.get("name") and b.get("prefix"):
            errors.append(f"{source}: backends[{i}]: prefix is for a backend without name "
                          "and model (it names the models the backend lists)")
    discovering = [(b.get("base_url"), b.get("prefix", "")) for b in tables
                   if not b.get("name")]
    if len(set(discovering)) != len(discovering):
        errors.append(f"{source}: two backends list the same base_url with the same prefix")
    if errors:
        raise PublisherConfigError("\n".join(errors))
    return PublisherConfig(
        hub=tuple(url.rstrip("/") for url in (
            [data["hub"]] if isinstance(data["hub"], str) else data["hub"])),
        backends=tuple(_backend(b) for b in data["backends"]),
        key_env=data.get("key_env"),
        session_file=data.get("session_file"),
        probe_interval_s=float(data.get("probe_interval_s", 5.0)),
        drain_timeout_s=float(data.get("drain_timeout_s", 30.0)),
        result_channel=bool(data.get("result_channel", True)),
        **{k: data[k] for k in ("log_level", "log_format") if k in data},
    )


def load(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> PublisherConfig:
    """The config in the TOML file at `path`, with `overrides` (command-line flags) on top."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PublisherConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PublisherConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse({**data, **(overrides or {})}, str(path))
