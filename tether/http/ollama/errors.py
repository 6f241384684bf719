"""Errors on the Ollama routes: `{"error": "<message>"}`, Ollama's shape, with the status the
`/v1` route would give. tether/http/errors.py picks the shape by the request's path."""

from __future__ import annotations

from tether.errors import TetherError

NATIVE = "/api/v1"  # the hub's own API: OpenAI's error envelope, like /v1


def is_ollama_path(path: str) -> bool:
    """The Ollama routes, and every other `/api/*` path (pull, push, create, delete, copy…:
    Ollama's, not served here) so that their 404 is in Ollama's shape too; not the hub's
    own `/api/v1/*`."""
    return path.startswith("/api/") and path != NATIVE and not path.startswith(NATIVE + "/")


def body(error: TetherError) -> dict[str, str]:
    return {"error": error.message}
