"""Aliases as the Llm lists show them (docs/protocol.md, Aliases): a row per alias, made from
its targets' rows (never stored), so `/v1/models`, Ollama's `/api/tags`, `/api/ps` and
`/api/show` list an alias as they list an Llm. An alias is listed while one of its targets
is not `inactive`; its status is the best of its targets'. `GET /api/v1/llms` lists every
alias (`alias_wire`), with its targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tether.store.models import INACTIVE, Llm, derived_status, iso, utcnow

KIND_ALIAS = "alias"

Aliases = Mapping[str, tuple[str, ...]]  # alias name -> its targets, in order


def alias_row(name: str, targets: Sequence[str], rows: Mapping[str, Llm]) -> Llm | None:
    """The row of alias `name` over its targets' `rows` (by name); None while every target
    is unknown or `inactive`."""
    found = [rows[t] for t in targets if t in rows and rows[t].status != INACTIVE]
    if not found:
        return None
    first = found[0]
    return Llm(id=f"alias:{name}", name=name, type=first.type, model=name, tier=first.tier,
               description=f"alias of {', '.join(targets)}",
               extra_config=first.extra_config, kind=KIND_ALIAS,
               status=derived_status(row.status for row in found),
               created_at=min(row.created_at for row in found),
               updated_at=max(row.updated_at for row in found))


def with_aliases(rows: list[Llm], aliases: Aliases) -> list[Llm]:
    """`rows` (the Llms) and a row per alias that is listed, sorted by name."""
    if not aliases:
        return rows
    by_name = {row.name: row for row in rows}
    made = [alias_row(name, targets, by_name) for name, targets in aliases.items()]
    return sorted(rows + [row for row in made if row is not None], key=lambda r: r.name)


def alias_wire(name: str, targets: Sequence[str], rows: Mapping[str, Llm]) -> dict[str, Any]:
    """Alias `name` as `GET /api/v1/llms` shows it: `kind: "alias"`, its `targets`, and the
    best of their statuses (`inactive` when none is known)."""
    found = [rows[t] for t in targets if t in rows]
    created = min((row.created_at for row in found), default=None) or utcnow()
    updated = max((row.updated_at for row in found), default=None) or created
    return {"id": f"alias:{name}", "name": name, "type": "alias", "model": name, "tier": "",
            "description": f"alias of {', '.join(targets)}", "extraConfig": {},
            "kind": KIND_ALIAS, "providerSessionId": None,
            "status": derived_status(row.status for row in found), "lastHeartbeatAt": None,
            "inactiveSince": None, "createdAt": iso(created), "updatedAt": iso(updated),
            "targets": list(targets)}
