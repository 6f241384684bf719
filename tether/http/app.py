"""The falcon app. `create_app(settings, system)` is what tests use; `get_app()` builds the
settings and the actor system for gunicorn (after its gevent worker monkey-patched)."""

from __future__ import annotations

import logging

import falcon

from tether.actors.system import ActorSystem
from tether.config import Settings, load_settings
from tether.http import errors, schemas
from tether.http.relay import Relay
from tether.http.resources import faults, health, llms, openai, provider


def create_app(settings: Settings, system: ActorSystem) -> falcon.App:
    app = falcon.App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    relay = Relay(system)

    app.add_route("/healthz", health.Health())
    app.add_route("/api/v1/llms", llms.LlmCollection())
    app.add_route("/api/v1/llms/_provider-register", provider.Register(system))
    app.add_route("/api/v1/llms/_provider-stream", provider.Stream(system))
    app.add_route("/api/v1/llms/_provider-heartbeat", provider.Heartbeat(system))
    app.add_route("/api/v1/llms/_provider-status", provider.Status(system))
    app.add_route("/api/v1/llms/_provider-task/{task_id}/result", provider.TaskResult(system))
    app.add_route("/api/v1/llms/{name}", llms.LlmItem())
    app.add_route("/api/v1/llms/{name}/infer", llms.Infer(system, relay))

    app.add_route("/v1/chat/completions",
                  openai.Relayed(system, relay, schemas.V1_CHAT, "chat/completions"))
    app.add_route("/v1/completions",
                  openai.Relayed(system, relay, schemas.V1_COMPLETION, "completions"))
    app.add_route("/v1/embeddings",
                  openai.Relayed(system, relay, schemas.V1_EMBEDDING, "embeddings"))
    app.add_route("/v1/models", openai.Models())
    app.add_route("/v1/models/{name}", openai.Model())
    if settings.fault_injection:
        app.add_route("/_faults/crash", faults.Crash(system))
    return app


def build(settings: Settings) -> tuple[falcon.App, ActorSystem]:
    """Start the actor system and wire the app to it (call after gevent patched)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    system = ActorSystem(settings).start()
    return create_app(settings, system), system


def get_app() -> falcon.App:
    """For `gunicorn 'tether.http.app:get_app()'`; `tether serve` does this for you."""
    return build(load_settings())[0]
