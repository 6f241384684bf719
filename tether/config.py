"""One Settings object: built-in defaults < TOML file < TETHER_* environment < CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.names import LLM_NAME_PATTERN

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
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///tether.db"
    heartbeat_timeout_s: float = 90.0
    gc_interval_s: float = 60.0
    inactive_retention_s: float = 14400.0
    wake_timeout_s: float = 120.0
    infer_timeout_s: float = 600.0
    keepalive_s: float = 15.0
    publisher_grace_s: float = 10.0
    stream_idle_timeout_s: float = 120.0
    max_queue_per_llm: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    # None means "decide from host": off on loopback, on elsewhere.
    auth: str | None = None
    rate_limit_per_min: int = 600
    max_inflight_per_key: int = 64
    max_streams_per_key: int = 256
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    # Test hook: exposes POST /_faults/crash to inject actor crashes. Never on in production.
    fault_injection: bool = False
    # Origins browser apps may call the hub from (CORS): "https://app.example" entries, or
    # "*" for any; empty (the default) sends no CORS headers. Env: comma-separated.
    cors_origins: tuple[str, ...] = ()
    llms: tuple[PublicLlm, ...] = ()

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_timeout_s / 3

    def public_llm(self, name: str) -> PublicLlm | None:
        return next((llm for llm in self.llms if llm.name == name), None)

    @property
    def auth_enabled(self) -> bool:
        if self.auth is not None:
            return self.auth == "on"
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "llms"}
_LLM_NAME = re.compile(LLM_NAME_PATTERN)
_LLM_KEYS = {"name", "type", "model", "base_url", "api_key_env", "tier", "description",
             "extraConfig", "extra_config"}


def _public_llms(raw: Any, source: str) -> tuple[PublicLlm, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'llms' must be [[llms]] tables")
    out: list[PublicLlm] = []
    for i, item in enumerate(raw):
        where = f"{source}: llms[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(item) - _LLM_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for key in ("name", "type", "model", "base_url"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ConfigError(f"{where}: {key!r} is required (a non-empty string)")
        if not _LLM_NAME.match(item["name"]):
            raise ConfigError(f"{where}.name: {item['name']!r} is not a valid Llm name")
        if not item["base_url"].startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: must be an http(s) URL")
        extra = item.get("extraConfig", item.get("extra_config", {}))
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}.extraConfig: must be a table")
        for key in ("api_key_env", "tier", "description"):
            if key in item and not isinstance(item[key], str):
                raise ConfigError(f"{where}.{key}: must be a string")
        out.append(PublicLlm(
            name=item["name"], type=item["type"], model=item["model"],
            base_url=item["base_url"].rstrip("/"), api_key_env=item.get("api_key_env"),
            tier=item.get("tier", "fast"), description=item.get("description", ""),
            extra_config=extra,
        ))
    names = [llm.name for llm in out]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"{source}: two [[llms]] are named {duplicate!r}")
    return tuple(out)


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number < 0:
                raise ValueError
            return number
        if kind == "bool":
            text = str(value).lower()
            if text not in ("true", "1", "on", "yes", "false", "0", "off", "no"):
                raise ValueError
            return text in ("true", "1", "on", "yes")
        if name == "auth":
            text = str(value).lower()
            if text in ("true", "1"):
                text = "on"
            if text in ("false", "0"):
                text = "off"
            if text not in ("on", "off"):
                raise ValueError
            return text
        if name == "cors_origins":
            return _origins(value)
        if name == "log_format" and str(value) not in ("text", "json"):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting {name!r} has an unusable value {value!r}") from None


def _origins(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError  # an origin is scheme://host[:port], nothing after
    return origins


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from every layer; `overrides` are CLI flags (None values are ignored)."""
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
        for key, value in hub.items():
            if key in _FIELDS:
                values[key] = _coerce(key, value, str(path))
            elif key not in ("hub", "llms"):
                raise ConfigError(f"{path}: unknown setting {key!r}")
        if "llms" in data:
            values["llms"] = _public_llms(data["llms"], str(path))
    elif explicit:
        raise ConfigError(f"{path}: config file not found")

    for name in _FIELDS:
        raw = env.get(f"TETHER_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"TETHER_{name.upper()}")

    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")

    return Settings(**values)
