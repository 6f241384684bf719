"""One Settings object: built-in defaults < TOML file < TETHER_* environment < CLI flags.

Each setting is declared once, below, with its default and its JSON Schema
(tether.common.config_schema); validation, env/flag coercion and error messages come from that."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.common.config_schema import check, coerce, object_schema, setting, settings_of
from tether.common.logs import LOG_FORMAT_SCHEMA, LOG_LEVEL_SCHEMA
from tether.common.names import LLM_NAME_PATTERN

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path("conf/tether.toml")


class ConfigError(Exception):
    """A setting that cannot be used; the message names the key and where it came from."""


@dataclasses.dataclass(frozen=True)
class PublicLlm:
    """An Llm the hub declares itself ([[llms]] in its config), proxied to an upstream."""

    name: str
    type: str
    model: str
    base_url: str
    api_key_env: str | None = None
    tier: str = "fast"
    description: str = ""
    extra_config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclasses.dataclass(frozen=True)
class Alias:
    """A name that stands for an ordered list of Llms ([[aliases]] in the hub's config:
    docs/protocol.md, Aliases); the first that can serve now takes each request."""

    name: str
    targets: tuple[str, ...]


_TEXT = {"type": "string", "minLength": 1, "x-message": "must be a non-empty string"}
_URL = {"type": "string", "pattern": "^https?://", "x-message": "must be an http(s) URL"}
_SECONDS = {"type": "number", "minimum": 0, "x-message": "must be a number >= 0"}
_INT = {"type": "integer", "x-message": "must be a whole number"}
_STRING = {"type": "string"}

PUBLIC_LLM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": LLM_NAME_PATTERN,
                 "x-message": f"must be a valid Llm name ({LLM_NAME_PATTERN})"},
        "type": _TEXT, "model": _TEXT, "base_url": _URL,
        "api_key_env": _STRING, "tier": _STRING, "description": _STRING,
        "extraConfig": {"type": "object", "x-message": "must be a table"},
        "extra_config": {"type": "object", "x-message": "must be a table"},
    },
    "required": ["name", "type", "model", "base_url"],
    "additionalProperties": False,
}


_LLM_NAME = {"type": "string", "pattern": LLM_NAME_PATTERN,
             "x-message": f"must be a valid Llm name ({LLM_NAME_PATTERN})"}

ALIAS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": _LLM_NAME,
        "targets": {"type": "array", "minItems": 1, "items": _LLM_NAME,
                    "x-messages": {"minItems": "must name at least one Llm",
                                   "type": "must be a list of Llm names"}},
    },
    "required": ["name", "targets"],
    "additionalProperties": False,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", _STRING)
    port: int = setting(8080, _INT)
    database_url: str = setting("sqlite:///tether.db", _STRING)
    heartbeat_timeout_s: float = setting(90.0, _SECONDS)
    gc_interval_s: float = setting(60.0, _SECONDS)
    inactive_retention_s: float = setting(14400.0, _SECONDS)
    wake_timeout_s: float = setting(120.0, _SECONDS)
    infer_timeout_s: float = setting(600.0, _SECONDS)
    keepalive_s: float = setting(15.0, _SECONDS)  # SSE comments (PROTOCOL), not TCP
    # How long gunicorn keeps an idle HTTP keep-alive connection open (its `keepalive`): 5 s
    # is long enough for a publisher's busy result POSTs and short enough that idle
    # connections do not hold SIGTERM up (gunicorn waits for them, up to graceful_timeout).
    # Behind a load balancer it must outlast the balancer's own idle timeout (AWS ALB: 60 s),
    # else the balancer reuses a connection the hub just closed and its client gets a 502.
    # Whole seconds (gunicorn's type); 0 closes every connection after one request.
    http_keepalive_s: int = setting(5, {
        "type": "integer", "minimum": 0,
        "x-message": "must be a whole number of seconds >= 0 (0: no keep-alive)"})
    publisher_grace_s: float = setting(10.0, _SECONDS)
    stream_idle_timeout_s: float = setting(120.0, _SECONDS)
    max_queue_per_llm: int = setting(256, _INT)
    max_body_bytes: int = setting(4 * 1024 * 1024, _INT)
    # What a JSON body may be once parsed (tether/http/body.py), checked before it is: its
    # nesting (the parser, schema check and store recurse), and its values (each a Python
    # object: a 4 MiB body of `{}` would be ~100 MB). 400 `invalid_request` above either.
    max_json_depth: int = setting(64, {"type": "integer", "minimum": 2, "maximum": 256,
                                       "x-message": "must be a whole number from 2 to 256"})
    max_json_values: int = setting(65536, {"type": "integer", "minimum": 16,
                                            "x-message": "must be a whole number >= 16"})
    # How a pool picks a member (tether/actors/routing.py): "affinity" (a conversation's
    # turns to the member holding its prefix, else the least loaded) or "round_robin".
    pool_routing: str = setting("affinity", {
        "enum": ["affinity", "round_robin"], "x-message": "must be affinity or round_robin"})
    # None means "decide from host": off on loopback, on elsewhere.
    auth: str | None = setting(None, {
        "enum": ["on", "off"], "x-aliases": {"true": "on", "1": "on", "false": "off", "0": "off"},
        "x-message": "must be on or off"})
    # Usage counts (docs/protocol.md, Usage) are kept in memory and added to the database this
    # often (and at shutdown): no write per request. At most 10 s, as the protocol promises.
    usage_flush_s: float = setting(5.0, {
        "type": "number", "exclusiveMinimum": 0, "maximum": 10,
        "x-message": "must be a number of seconds > 0 and <= 10"})
    rate_limit_per_min: int = setting(600, _INT)
    # Registrations per publisher key (per client address with auth off) a minute; 0: no
    # limit. Each register without a session id makes a session the hub keeps (for
    # inactive_retention_s), so a caller must not make them without bound.
    register_rate_per_min: int = setting(60, _INT)
    max_inflight_per_key: int = setting(64, _INT)
    max_streams_per_key: int = setting(256, _INT)
    # What one publisher key may make every read of the Llm list carry (docs/protocol.md,
    # Limits): the Llm names it holds, and each provider's extraConfig, serialized.
    max_llms_per_key: int = setting(256, {"type": "integer", "minimum": 1,
                                          "x-message": "must be a whole number >= 1"})
    max_extra_config_bytes: int = setting(16384, {"type": "integer", "minimum": 2,
                                                  "x-message": "must be a whole number >= 2"})
    # Several processes (docs/protocol.md, Several hub processes): gunicorn workers on this host,
    # and the Redis that carries what is live between processes. Unset bus_url: one process,
    # everything in memory. Either needs a PostgreSQL database_url (checked by `tether serve`).
    workers: int = setting(1, {"type": "integer", "minimum": 1,
                               "x-message": "must be a whole number >= 1"})
    bus_url: str | None = setting(None, {"type": "string", "pattern": "^rediss?://",
                                         "x-message": "must be a redis:// URL"})
    # With a bus: a process whose liveness key (renewed every second) is this old is dead.
    # It must outlast any pause of a live process, and be the same on every process.
    liveness_ttl_s: float = setting(5.0, {
        "type": "number", "minimum": 2,
        "x-message": "must be a number >= 2 (liveness keys are renewed every second)"})
    # With a bus: how often each name's owner compares the tasks it counts in flight with
    # those its members' sessions hold, and corrects any difference (docs/protocol.md, Lost
    # messages). A message lost on the bus is corrected within two periods.
    reconcile_interval_s: float = setting(2.0, {
        "type": "number", "minimum": 0.5, "x-message": "must be a number >= 0.5"})
    # CPython's cyclic collector in a hub worker (tether/http/python_gc.py): "freeze" keeps full
    # collections from rescanning what survived the last one; "default" is CPython's own.
    python_gc: str = setting("freeze", {
        "enum": ["freeze", "default"], "x-message": "must be freeze or default"})
    log_level: str = setting("info", LOG_LEVEL_SCHEMA)
    log_format: str = setting("text", LOG_FORMAT_SCHEMA)  # json: one JSON object per line
    # Test hook: exposes POST /_faults/crash to inject actor crashes. Never on in production.
    fault_injection: bool = setting(False, {
        "type": "boolean", "x-message": "must be true or false"})
    # Origins browser apps may call the hub from (CORS): "https://app.example" entries, or
    # "*" for any; empty (the default) sends no CORS headers. Env: comma-separated.
    cors_origins: tuple[str, ...] = setting((), {
        "type": "array",
        # an origin is scheme://host[:port], nothing after (a trailing / is dropped)
        "items": {"type": "string", "pattern": r"^(\*|https?://[^/\s]+/?)$",
                  "x-message": "must be * or scheme://host[:port]"}})
    llms: tuple[PublicLlm, ...] = setting((), {
        "type": "array", "items": PUBLIC_LLM_SCHEMA, "x-message": "must be [[llms]] tables"})
    aliases: tuple[Alias, ...] = setting((), {
        "type": "array", "items": ALIAS_SCHEMA, "x-message": "must be [[aliases]] tables"})

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_timeout_s / 3

    def public_llm(self, name: str) -> PublicLlm | None:
        return next((llm for llm in self.llms if llm.name == name), None)

    def alias_targets(self) -> dict[str, tuple[str, ...]]:
        """Each alias's targets, by its name."""
        return {alias.name: alias.targets for alias in self.aliases}

    @property
    def auth_enabled(self) -> bool:
        if self.auth is not None:
            return self.auth == "on"
        return not is_loopback(self.host)


SCHEMA = object_schema(Settings)
_TABLES = ("llms", "aliases")  # arrays of tables at the file's top level, not settings
_SETTINGS = {name: schema for name, schema in settings_of(Settings).items()
             if name not in _TABLES}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _where(path: str) -> str:
    if not path:
        return ""
    head, _, rest = path.partition(".")
    if head in _SETTINGS and not rest and "[" not in head:
        return f"setting {head!r}: "
    return f"{path}: "


def _check(values: dict[str, Any], source: str) -> list[str]:
    return check(SCHEMA, values, lambda where, what: f"{source}: {_where(where)}{what}")


def _duplicate_llms(values: dict[str, Any], source: str) -> list[str]:
    # A missing or mistyped name is the schema's to report; only names can be compared.
    names = [item["name"] for item in values.get("llms", [])
             if isinstance(item, dict) and isinstance(item.get("name"), str)]
    twice = sorted({n for n in names if names.count(n) > 1})
    return [f"{source}: two [[llms]] are named {name!r}" for name in twice]


def _bad_aliases(values: dict[str, Any], source: str) -> list[str]:
    """What the schema cannot see: an alias naming itself or another alias (aliases do not
    nest), a name given twice, an alias over a public Llm's name."""
    tables = [item for item in values.get("aliases", [])
              if isinstance(item, dict) and isinstance(item.get("name"), str)]
    names = [item["name"] for item in tables]
    public = {item.get("name") for item in values.get("llms", []) if isinstance(item, dict)}
    out = [f"{source}: two [[aliases]] are named {name!r}"
           for name in sorted({n for n in names if names.count(n) > 1})]
    for i, item in enumerate(tables):
        name, targets = item["name"], item.get("targets")
        where = f"{source}: aliases[{i}] ({name!r})"
        if name in public:
            out.append(f"{where}: is the name of a public Llm ([[llms]])")
        if not isinstance(targets, list):
            continue  # the schema's to report
        for target in sorted({t for t in targets if isinstance(t, str)}):
            if target == name:
                out.append(f"{where}: targets: names the alias itself")
            elif target in names:
                out.append(f"{where}: targets: {target!r} is an alias (aliases do not nest)")
            elif targets.count(target) > 1:
                out.append(f"{where}: targets: names {target!r} twice")
    return out


def _public_llm(item: dict[str, Any]) -> PublicLlm:
    return PublicLlm(
        name=item["name"], type=item["type"], model=item["model"],
        base_url=item["base_url"].rstrip("/"), api_key_env=item.get("api_key_env"),
        tier=item.get("tier", "fast"), description=item.get("description", ""),
        extra_config=item.get("extraConfig", item.get("extra_config", {})),
    )


def _typed(name: str, value: Any) -> Any:
    """A validated value in the type Settings holds."""
    if name == "llms":
        return tuple(_public_llm(item) for item in value)
    if name == "aliases":
        return tuple(Alias(item["name"], tuple(item["targets"])) for item in value)
    if name == "cors_origins":
        return tuple(origin.rstrip("/") for origin in value)
    kind = _SETTINGS[name].get("type")
    if kind == "number":
        return float(value)
    if kind == "integer":
        return int(value)  # JSON Schema counts 9000.0 as an integer
    return value


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from every layer; `overrides` are CLI flags (None values are ignored).

    Every unusable value of a layer is reported at once (one line each, naming where it
    came from and the setting)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    path = config_path or env.get("TETHER_CONFIG")
    explicit = path is not None
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists() and not explicit:
        path = REPO_ROOT / DEFAULT_CONFIG
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        hub = data.get("hub", data)
        found = {key: value for key, value in hub.items() if key not in ("hub", *_TABLES)}
        for table in _TABLES:
            if table in data:
                found[table] = data[table]
        found = {key: coerce(_SETTINGS[key], value) if key in _SETTINGS else value
                 for key, value in found.items()}
        errors = (_check(found, str(path)) + _duplicate_llms(found, str(path))
                  + _bad_aliases(found, str(path)))
        if errors:
            raise ConfigError("\n".join(errors))
        values.update(found)
    elif explicit:
        raise ConfigError(f"{path}: config file not found")

    errors = []
    for name, schema in _SETTINGS.items():
        raw = env.get(f"TETHER_{name.upper()}")
        if raw is not None and raw != "":
            value = coerce(schema, raw)
            errors += _check({name: value}, f"TETHER_{name.upper()}")
            values[name] = value
    for name, flag in (overrides or {}).items():
        if flag is not None:
            value = coerce(_SETTINGS[name], flag)
            errors += _check({name: value}, f"--{name.replace('_', '-')}")
            values[name] = value
    if errors:
        raise ConfigError("\n".join(errors))
    return Settings(**{name: _typed(name, value) for name, value in values.items()})
