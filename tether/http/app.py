"""The falcon app. `create_app(settings, system)` is what tests use; `get_app()` builds the
settings and the actor system for gunicorn (after its gevent worker monkey-patched)."""

from __future__ import annotations

from typing import Any

import falcon

from tether.actors.system import ActorSystem
from tether.common import logs
from tether.config import Settings, load_settings
from tether.http import errors, request_ids
from tether.http.allow import AllowMiddleware
from tether.http.auth import Auth, AuthMiddleware
from tether.http.limits import Limiter, StreamCounter
from tether.http.ollama import models as ollama_models
from tether.http.ollama import resources as ollama
from tether.http.ollama import translate as ollama_translate
from tether.http.openapi import OpenApi
from tether.http.probes import Probes
from tether.http.relay import Relay
from tether.http.resources import (
    faults,
    health,
    infer,
    llms,
    metrics,
    openai,
    provider,
    results,
    status,
    usage,
)
from tether.observability.board import BOARD


def create_app(settings: Settings, system: ActorSystem) -> falcon.App:
    auth = Auth(settings)
    middleware: list[Any] = [request_ids.RequestIdMiddleware(), AuthMiddleware(auth),
                             AllowMiddleware()]
    if settings.cors_origins:
        middleware.insert(0, Cors(settings.cors_origins))  # first: it sees every response
    app = falcon.App(cors_enable=False, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    relay = Relay(system)
    limiter, streams_per_key = limiters(settings)
    if settings.bus_url is not None and auth.enabled:
        from tether.http import revocations

        revocations.follow(settings.bus_url, auth.keys)

    docs = OpenApi(auth.enabled)
    aliases = settings.alias_targets()  # listed as the Llms are (alias_rows)
    BOARD.aliases = dict(aliases)  # the status page shows which target serves each
    routes: list[tuple[str, Any]] = [  # every path of the hub, once
        ("/healthz", health.Health(system, Probes(settings))),
        ("/openapi.json", docs),
        ("/metrics", metrics.Metrics()),
        ("/status", status.Page("status.html", "text/html; charset=utf-8",
                                "The status page (HTML)")),
        ("/status/status.js", status.Page("status.js", "text/javascript; charset=utf-8",
                                          "The status page's script")),
        ("/status/status.css", status.Page("status.css", "text/css; charset=utf-8",
                                           "The status page's style")),
        ("/status/state", status.State()),
        ("/status/events", status.Events(settings.keepalive_s)),
        ("/api/v1/usage", usage.Usage()),
        ("/api/v1/llms", llms.LlmCollection(system)),
        ("/api/v1/llms/_provider-register", provider.Register(system, auth)),
        ("/api/v1/llms/_provider-stream",
         provider.Stream(system, auth, streams_per_key)),
        ("/api/v1/llms/_provider-heartbeat", provider.Heartbeat(system, auth)),
        ("/api/v1/llms/_provider-status", provider.Status(system, auth)),
        ("/api/v1/llms/_provider-withdraw", provider.Withdraw(system, auth)),
        ("/api/v1/llms/_provider-task/{task_id}/result", provider.TaskResult(system, auth)),
        ("/api/v1/llms/_provider-results", results.ResultChannel(system, auth)),
        ("/api/v1/llms/{name}", llms.LlmItem(system)),
        ("/api/v1/llms/{name}/infer", infer.Infer(system, relay, limiter, infer.NATIVE)),
        *((f"/v1/{endpoint}", infer.Infer(system, relay, limiter, operation, endpoint))
          for endpoint, operation in infer.V1.items()),
        ("/v1/models", openai.Models(aliases)),
        ("/v1/models/{name}", openai.Model(aliases)),
        # Ollama's own API (tether/http/ollama); its other /api/* paths are 404s.
        ("/", ollama_models.Root()),
        ("/api/version", ollama_models.Version()),
        ("/api/tags", ollama_models.Tags(aliases)),
        ("/api/ps", ollama_models.Running(aliases)),
        ("/api/show", ollama_models.Show(system)),
        ("/api/chat", ollama.Generation(system, relay, limiter, ollama.CHAT,
                                        ollama_translate.chat)),
        ("/api/generate", ollama.Generation(system, relay, limiter, ollama.GENERATE,
                                            ollama_translate.generate)),
        ("/api/embed", ollama.Generation(system, relay, limiter, ollama.EMBED,
                                         ollama_translate.embed)),
        ("/api/embeddings", ollama.Generation(system, relay, limiter, ollama.EMBEDDINGS,
                                              ollama_translate.embeddings)),
    ]
    if settings.fault_injection:
        routes.append(("/_faults/crash", faults.Crash(system)))
        routes.append(("/_faults/drop", faults.Drop(system)))
    for path, resource in routes:
        app.add_route(path, resource)
    docs.describe(routes)
    return app


def limiters(settings: Settings) -> tuple[Limiter, StreamCounter]:
    """This process's limiters: in-process, or cluster-wide in Redis when there is a bus."""
    if settings.bus_url is None:
        return Limiter(settings), StreamCounter(settings)
    from tether.http import shared_limits  # redis and limits load only with a bus

    return shared_limits.shared(settings)


class Cors(falcon.CORSMiddleware):
    """falcon's CORS policy (preflight answered, Access-Control-Allow-* on every response,
    errors included) for the `cors_origins` setting."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        super().__init__(allow_origins="*" if "*" in origins else origins,
                         # X-Tether-Llm: who answered (an alias's target)
                         expose_headers=["Retry-After", "X-Request-Id", "X-Tether-Llm"])

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        if self.allow_origins != "*":
            resp.append_header("Vary", "Origin")  # the answer depends on the Origin header


def build(settings: Settings) -> tuple[falcon.App, ActorSystem]:
    """Start the actor system and wire the app to it (call after gevent patched): with a
    bus_url, one process of a cluster (tether.cluster.system)."""
    logs.setup(settings.log_level, settings.log_format)
    system = start_system(settings)
    return create_app(settings, system), system


def start_system(settings: Settings) -> ActorSystem:
    """One process's actor system, or, with a bus_url, one of a cluster's."""
    if settings.bus_url is None:
        return ActorSystem(settings).start()
    from tether.cluster.system import ClusterSystem  # redis loads only with a bus

    return ClusterSystem(settings).start()


def get_app() -> falcon.App:
    """For `gunicorn 'tether.http.app:get_app()'`; `tether serve` does this for you."""
    return build(load_settings())[0]
