"""GET /metrics: Prometheus text format (admin key)."""

from __future__ import annotations

from collections import Counter

import falcon

from tether.actors.system import ActorSystem
from tether.store import llms as store


class Metrics:
    role = "admin"

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = store.list_all()
        by_state = Counter((row.kind, row.status) for row in rows)
        directory = self.system.directory
        lines = [
            "# HELP tether_llms Llm rows by kind and status.",
            "# TYPE tether_llms gauge",
            *(f'tether_llms{{kind="{kind}",status="{status}"}} {count}'
              for (kind, status), count in sorted(by_state.items())),
            "# HELP tether_sessions Publisher sessions known to this hub process.",
            "# TYPE tether_sessions gauge",
            f"tether_sessions {len(directory.sessions)}",
            "# HELP tether_llm_actors Llm actors running.",
            "# TYPE tether_llm_actors gauge",
            f"tether_llm_actors {len(directory.llms)}",
        ]
        resp.content_type = "text/plain; version=0.0.4"
        resp.text = "\n".join(lines) + "\n"
