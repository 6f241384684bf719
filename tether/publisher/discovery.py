"""Discovery (docs/protocol.md, Discovery): the models a backend lists, as the Llms this
publisher serves. A backend given without a model publishes every id `GET {base_url}/models`
lists, as `prefix + id`; an Ollama backend also says, on its own `/api/tags`, what each model
is (family, parameter size, quantization), which goes into the row's description and
`extraConfig.ollama.details` (where the hub's `/api/tags` reads it).

Blocking calls (urllib): the publisher runs them in greenlets (gevent patched), and `tether
publish` with no backend runs `find_local` before anything starts.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tether.common.names import LLM_NAME_PATTERN
from tether.publisher.config import BackendConfig

log = logging.getLogger("tether.publisher")

LIST_TIMEOUT_S = 5.0
# What Ollama's /api/tags says of a model, kept as Ollama words it (the hub's /api/tags
# shows these fields).
DETAIL_KEYS = ("parent_model", "format", "family", "families", "parameter_size",
               "quantization_level")
# The servers people run on their own machine, on their usual ports (docs/protocol.md).
LOCAL_SERVERS = ((11434, "Ollama"), (1234, "LM Studio"), (8080, "llama.cpp's server"),
                 (8000, "vLLM"))


class ListingFailed(Exception):
    """The backend did not list its models (down, a non-200, a body that is no list)."""


@dataclass(frozen=True)
class Served:
    """One Llm a backend serves: its config (name and model set) and what goes in the row's
    extraConfig."""

    config: BackendConfig
    extra_config: Mapping[str, Any] = field(default_factory=dict)


def _get_json(url: str, api_key: str | None, timeout: float) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            data = answer.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise ListingFailed(f"GET {url} answered {exc.code}") from None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad URL
        raise ListingFailed(f"GET {url} failed: {exc}") from None
    try:
        return json.loads(data)
    except ValueError:
        raise ListingFailed(f"GET {url} answered a body that is not JSON") from None


def list_ids(base_url: str, api_key: str | None, timeout: float = LIST_TIMEOUT_S) -> list[str]:
    """The ids of `GET {base_url}/models` (the OpenAI list), in its order, once each."""
    body = _get_json(f"{base_url}/models", api_key, timeout)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(
            isinstance(x, dict) and isinstance(x.get("id"), str) for x in data):
        raise ListingFailed(f"GET {base_url}/models answered no list of models "
                            "({\"data\": [{\"id\": …}, …]})")
    return list(dict.fromkeys(x["id"] for x in data))


def ollama_details(base_url: str, api_key: str | None,
                   timeout: float = LIST_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Each model's `details` from Ollama's `/api/tags` (beside `/v1`); {} from a backend
    that is not Ollama, or whose answer is not Ollama's."""
    if not base_url.endswith("/v1"):
        return {}
    try:
        body = _get_json(f"{base_url[:-3]}/api/tags", api_key, timeout)
    except ListingFailed:
        return {}
    models = body.get("models") if isinstance(body, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for model in models if isinstance(models, list) else ():
        if not isinstance(model, dict) or not isinstance(model.get("details"), dict):
            continue
        details = {k: model["details"][k] for k in DETAIL_KEYS if k in model["details"]}
        for key in ("name", "model"):
            if isinstance(model.get(key), str):
                out[model[key]] = details
    return out


def describe(details: Mapping[str, Any]) -> str:
    """`llama 8.0B Q4_K_M`: what a person reads first of a model."""
    parts = [details.get(k) for k in ("family", "parameter_size", "quantization_level")]
    return " ".join(p for p in parts if isinstance(p, str) and p)


def served(backend: BackendConfig, ids: Sequence[str],
           details: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Served], list[str]]:
    """The Llms a listing makes (by name), and the ids that make no valid Llm name."""
    out: dict[str, Served] = {}
    invalid = []
    for model in ids:
        name = backend.prefix + model
        if not re.fullmatch(LLM_NAME_PATTERN, name):
            invalid.append(model)
            continue
        said = details.get(model)
        config = replace(backend, name=name, model=model,
                         description=backend.description or (describe(said) if said else ""))
        out[name] = Served(config, {"ollama": {"details": dict(said)}} if said else {})
    return out, invalid


def find_local(ports: Sequence[int], avoid: set[tuple[str, int]],
               timeout: float = 1.0) -> list[str]:
    """The base URLs of the servers answering `GET /v1/models` on the loopback address,
    one per port of `ports` (in that order), skipping the (host, port) pairs of `avoid`."""
    found = []
    for port in ports:
        if any(port == p and host in ("127.0.0.1", "localhost", "::1") for host, p in avoid):
            continue
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            list_ids(base_url, None, timeout)
        except ListingFailed:
            continue
        if not _is_tether_hub(port, timeout):
            found.append(base_url)
    return found


def _is_tether_hub(port: int, timeout: float) -> bool:
    """A Tether hub lists models too (its /v1/models): its /healthz says what it is. The
    hub's own address may be spelt in a way we cannot match (a LAN address of this
    machine), and publishing one hub's models to another is never what a bare `tether
    publish --hub URL` means."""
    try:
        body = _get_json(f"http://127.0.0.1:{port}/healthz", None, timeout)
    except ListingFailed:
        return False
    return isinstance(body, dict) and {"database", "bus"} <= set(body)


class Catalogue:
    """What one discovering backend serves, from its latest successful listing; logs each
    change once (a failing listing, ids that make no name, an empty list), never each
    interval."""

    def __init__(self, backend: BackendConfig, current: Mapping[str, Served]) -> None:
        self.backend = backend
        self.served = dict(current)
        self.listed = False  # a listing succeeded once
        self.error: str | None = None
        self.invalid: frozenset[str] = frozenset()

    def failed(self, error: str) -> None:
        """A listing failed: nothing changes (docs/protocol.md, Discovery)."""
        if error != self.error:
            log.warning("could not list the models of %s (%s): what it publishes stays as "
                        "it was", self.backend.key, error)
        self.error = error

    def read(self, ids: Sequence[str],
             details: Mapping[str, Mapping[str, Any]]) -> dict[str, Served] | None:
        """A listing succeeded: the new Llms, or None if nothing changed."""
        if self.error is not None:
            log.info("the models of %s can be listed again", self.backend.key)
            self.error = None
        now, invalid = served(self.backend, ids, details)
        if invalid and frozenset(invalid) != self.invalid:
            log.warning("%s lists model ids that are no valid Llm name, skipped: %s",
                        self.backend.key, ", ".join(invalid))
        self.invalid = frozenset(invalid)
        if not now and (self.served or not self.listed):
            log.warning("%s lists no model: it publishes nothing", self.backend.key)
        first, self.listed = not self.listed, True
        if now == self.served and not first:
            return None
        self.served = now
        return now
