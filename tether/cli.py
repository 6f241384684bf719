"""The `tether` command: serve | publish | demo | demo-backend | keys | usage | llms |
status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tether.config import ConfigError, Settings, is_loopback, load_settings


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        overrides={"host": args.host, "port": args.port, "database_url": args.database_url,
                   "workers": args.workers, "bus_url": args.bus_url,
                   "auth": "off" if args.insecure_no_auth else None},
    )
    if not settings.auth_enabled and not is_loopback(settings.host) and not args.insecure_no_auth:
        print(
            f"tether serve: refusing to listen on {settings.host} with auth off: anyone who "
            "reaches it could publish and read models. Turn auth on (and create keys with "
            "`tether keys create`), or pass --insecure-no-auth if you mean it.",
            file=sys.stderr,
        )
        return 2
    refusal = scale_out_refusal(settings)
    if refusal:
        print(f"tether serve: {refusal}", file=sys.stderr)
        return 2
    from tether.store import db

    # Opened and migrated here, before gunicorn forks: a database that cannot be opened or
    # prepared (no right to create tables) is one line and status 2, not a worker's boot
    # traceback. Closed again: the worker opens its own connections.
    try:
        _prepare_database(settings.database_url)
    finally:
        db.close()
    from tether.http.server import serve
    from tether.observability import multiproc_metrics

    with multiproc_metrics.directory(settings.workers):  # several workers: /metrics per host
        serve(settings)
    return 0


def scale_out_refusal(settings: Settings) -> str | None:
    """Why these settings cannot run as several processes, or None (docs/protocol.md, Several hub
    processes): processes share rows through PostgreSQL (SQLite is one process's file) and
    live work through Redis; several workers without the bus would each hold their own
    publishers and answer 404 for the others'."""
    several = settings.workers > 1
    if not several and settings.bus_url is None:
        return None
    wanted = f"--workers {settings.workers}" if several else "a bus_url"
    missing = []
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        from tether.store.db import redact

        missing.append(f"a PostgreSQL database_url (postgresql://user@host/db, not "
                       f"{redact(settings.database_url)})")
    if several and settings.bus_url is None:
        missing.append("a bus_url (redis://host:6379/0)")
    if missing:
        return (f"{wanted} needs {' and '.join(missing)}: several hub processes share their "
                "rows through PostgreSQL and their live work through Redis (README, Running "
                "several hubs). Set them with --database-url/--bus-url, TETHER_DATABASE_URL/"
                "TETHER_BUS_URL or the config file.")
    return None


def _open_store(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, overrides={
        "database_url": args.database_url, "bus_url": getattr(args, "bus_url", None)})
    _prepare_database(settings.database_url)
    return settings


def _prepare_database(url: str) -> None:
    """Open the database and bring its schema up to date, or raise DatabaseUnavailable."""
    import peewee

    from tether.store import db, migrations

    db.check(url)
    db.init(url)
    try:
        migrations.migrate()
    except peewee.PeeweeException as exc:
        raise db.unavailable("prepare", url, exc) from exc


def _llms(args: argparse.Namespace) -> int:
    _open_store(args)
    from tether.store import llms as store

    print(json.dumps({"llms": [row.to_wire() for row in store.list_all()]}, indent=2))
    return 0


def _usage(args: argparse.Namespace) -> int:
    _open_store(args)
    from tether.store import usage
    from tether.store.models import utcnow

    try:
        since = usage.parse_since(args.since, utcnow()) if args.since is not None else None
    except ValueError as exc:
        print(f"tether usage: --since: {exc}", file=sys.stderr)
        return 2
    print(usage_table(usage.totals(since)), end="")
    return 0


def usage_table(rows: list[dict]) -> str:
    """GET /api/v1/usage's rows as a text table, one per key and Llm ("-": no key, auth
    off; no alias)."""
    head = ("KEY", "LLM", "ALIAS", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS")
    lines = [head, *((r["key"] or "-", r["llm"], r["alias"] or "-", str(r["requests"]),
                      str(r["promptTokens"]), str(r["completionTokens"])) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                   .rstrip() + "\n" for line in lines)


def _keys(args: argparse.Namespace) -> int:
    settings = _open_store(args)
    from tether.store import keys

    try:
        llms = _names(args.llms) if getattr(args, "llms", None) is not None else None
        if args.action == "create":
            key = keys.create(args.name, args.role, llms)
            scope = f", limited to {', '.join(llms)}" if llms else ""
            print(f"Created the {args.role} key {args.name!r}{scope}. It is shown once; "
                  "keep it safe:")
            print(key)
            return 0
        if args.action == "update":
            if not keys.set_llms(args.name, None if args.all_llms else llms):
                print(f"tether keys: no active key named {args.name!r}", file=sys.stderr)
                return 2
            print(f"Updated {args.name!r}; {_tell_hubs(settings, args.name, 'use its new scope')}")
            return 0
    except ValueError as exc:
        print(f"tether keys: {exc}", file=sys.stderr)
        return 2
    if args.action == "list":
        for row in keys.list_keys():
            state = f"revoked {row['revokedAt']}" if row["revokedAt"] else "active"
            scope = ",".join(row["llms"]) if row["llms"] is not None else "*"
            print(f"{row['name']}\t{row['role']}\t{state}\tllms={scope}")
    elif not keys.revoke(args.name):
        print(f"tether keys: no active key named {args.name!r}", file=sys.stderr)
        return 2
    else:
        print(f"Revoked {args.name!r}; {_tell_hubs(settings, args.name, 'refuse it')}")
    return 0


def _names(given: str) -> list[str]:
    """`--llms a,b`: the names, spaces around each ignored (checked by keys.scope)."""
    return [name.strip() for name in given.split(",") if name.strip()]


def _tell_hubs(settings: Settings, key_name: str, effect: str) -> str:
    """Announce a revoked or changed key on the bus (hubs on a bus trust a valid key longer,
    told of changes); what the operator can expect, as a sentence ending in `effect`."""
    if settings.bus_url is None:
        return (f"hubs without a bus {effect} within a second (hubs on a bus: run this with "
                f"their bus_url, or they {effect} within 30 s).")
    import redis

    from tether.http import revocations

    try:
        heard = revocations.announce(settings.bus_url, key_name)
    except redis.RedisError as exc:
        return (f"the bus did not answer ({exc}): hubs {effect} within 30 s, as they re-read "
                "it from the database.")
    return f"told {heard} hub process(es) on the bus; every hub will {effect} within a second."


def _demo(args: argparse.Namespace) -> int:
    from tether.tools.demo import run

    return run(args)


def _demo_backend(args: argparse.Namespace) -> int:
    from tether.tools.demo_backend import serve

    serve(args.host, args.port, args.model, args.api_key, args.pidfile)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--database-url")
    serve.add_argument("--config", help="hub TOML (default conf/tether.toml, or TETHER_CONFIG)")
    serve.add_argument("--workers", type=int,
                       help="gunicorn workers on this host (more than 1 needs a PostgreSQL "
                       "database_url and a bus_url)")
    serve.add_argument("--bus-url", help="redis://host:6379/0, shared by every hub process")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow auth off on a non-loopback address")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="create, list, update and revoke bearer keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="print a new key (shown once)")
    create.add_argument("--role", required=True, choices=["publisher", "client", "admin"])
    create.add_argument("--name", required=True)
    create.add_argument("--llms", metavar="NAME[,NAME…]",
                        help="limit a client key to these Llm or alias names")
    key_actions.add_parser("list", help="list keys and their scopes (never their secrets)")
    update = key_actions.add_parser("update", help="change the Llms a client key may use")
    update.add_argument("name")
    scope = update.add_mutually_exclusive_group(required=True)
    scope.add_argument("--llms", metavar="NAME[,NAME…]", help="limit it to these names")
    scope.add_argument("--all-llms", action="store_true", help="let it use every Llm again")
    revoke = key_actions.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    for sub in (update, revoke):
        sub.add_argument("--bus-url", help="the hubs' bus (redis://…): they hear of it at once")
    for sub in (create, key_actions.choices["list"], update, revoke):
        sub.add_argument("--database-url")
        sub.add_argument("--config")
    keys.set_defaults(run=_keys)

    publish = commands.add_parser("publish", help="publish local backends on a hub")
    from tether.publisher import main as publisher_main

    publisher_main.add_arguments(publish)
    publish.set_defaults(run=publisher_main.run)

    demo = commands.add_parser("demo", help="hub + demo backend + publisher, in one command")
    demo.add_argument("--port", type=int, default=8080, help="the hub's port")
    demo.set_defaults(run=_demo)

    backend = commands.add_parser("demo-backend", help="the built-in OpenAI-compatible "
                                  "demo backend (for demos, tests and benchmarks)")
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, default=11500)
    backend.add_argument("--model", default="demo-model")
    backend.add_argument("--api-key", default=None)
    backend.add_argument("--pidfile", default=None)
    backend.set_defaults(run=_demo_backend)

    usage = commands.add_parser("usage", help="tokens and requests per client key and Llm")
    usage.add_argument("--since", help="an ISO-8601 time or a number of hours ago (default: "
                       "all); counted from the start of its hour")
    usage.add_argument("--database-url")
    usage.add_argument("--config")
    usage.set_defaults(run=_usage)

    llms = commands.add_parser("llms", help="print the Llm rows of a hub's database")
    llms.add_argument("--database-url")
    llms.add_argument("--config")
    llms.set_defaults(run=_llms)

    from tether.tools import status_cli

    status = commands.add_parser("status", help="a hub's Llms, live, as a table")
    status_cli.add_arguments(status)
    status.set_defaults(run=status_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from tether.store.db import DatabaseUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"tether {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
