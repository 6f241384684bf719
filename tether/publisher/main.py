"""`tether publish`: build the config (file or flags) and run the agent under gevent."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import urllib.parse

from tether.common import logs
from tether.publisher.config import PublisherConfig, PublisherConfigError, load, parse
from tether.publisher.discovery import LOCAL_SERVERS, find_local


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="publisher TOML (see conf/publisher.example.toml)")
    parser.add_argument("--hub", action="append",
                        help="hub URL, e.g. http://127.0.0.1:8080; repeat it for several hub "
                             "processes (tried in order; a loss moves to the next)")
    parser.add_argument("--name", help="the Llm name on the hub (with --model; without "
                        "both, every model the backend lists is published)")
    parser.add_argument("--model", help="the model name the backend expects")
    parser.add_argument("--backend", help="backend base URL, e.g. http://127.0.0.1:11434/v1 "
                        "(without any: the usual local ports are probed)")
    parser.add_argument("--prefix", help="put before each listed model's name, e.g. laptop-")
    parser.add_argument("--type", help="backend type (default openai)")
    parser.add_argument("--api-key-env", help="env var holding the backend's API key")
    parser.add_argument("--key-env", help="env var holding this publisher's hub key")
    parser.add_argument("--max-concurrency", type=int, help="default 4")
    parser.add_argument("--pool", action="store_true",
                        help="share the name with other publishers (a pool)")
    parser.add_argument("--wake-command", help="command that starts the backend")
    parser.add_argument("--sleep-command", help="command that stops the backend")
    parser.add_argument("--idle-sleep-s", type=float, help="idle this long → sleep command")
    parser.add_argument("--wake-timeout-s", type=float, help="default 120")
    parser.add_argument("--session-file", help="where the session id is kept")
    parser.add_argument("--log-level", help="debug, info (default: a line per task), warning…")
    parser.add_argument("--log-format", help="text (default) or json")
    parser.add_argument("--no-result-channel", action="store_true",
                        help="post each result on its own instead of on the session's "
                             "result channel (setting result_channel = false)")
    parser.add_argument("--install-service", action="store_true",
                        help="run this publisher (these arguments) as a user service that "
                             "starts at boot: systemd (Linux) or launchd (macOS)")
    parser.add_argument("--uninstall-service", action="store_true",
                        help="stop and remove the service --install-service made")


# Flags that describe the one backend of a flags-only publisher; a config file lists its own.
BACKEND_FLAGS = ("name", "model", "backend", "type", "api_key_env", "max_concurrency", "pool",
                 "wake_command", "sleep_command", "idle_sleep_s", "wake_timeout_s", "prefix")

# Flags for the publisher as a whole: with --config, they override the file.
GENERAL_FLAGS = ("hub", "key_env", "session_file", "log_level", "log_format")


def config_from_args(args: argparse.Namespace) -> PublisherConfig:
    if args.config:
        # A flag the file would silently win over is refused; --hub, --key-env,
        # --session-file and the log flags override the file's values.
        ignored = [f"--{k.replace('_', '-')}" for k in BACKEND_FLAGS
                   if getattr(args, k) not in (None, False)]
        if ignored:
            raise PublisherConfigError(
                f"command line: {' '.join(ignored)} cannot be combined with --config "
                "(the file lists its backends)")
        overrides = {k: getattr(args, k) for k in GENERAL_FLAGS if getattr(args, k)}
        if args.no_result_channel:
            overrides["result_channel"] = False
        return load(args.config, overrides)
    if not args.hub:
        raise PublisherConfigError("command line: give --config FILE, or --hub URL (and "
                                   "--backend URL, or none to find local servers)")
    if bool(args.name) != bool(args.model):
        raise PublisherConfigError("command line: give --name and --model together, or "
                                   "neither (to publish every model the backend lists)")
    if not args.backend and args.name:
        raise PublisherConfigError("command line: --name and --model need --backend")
    backend: dict = {"pool": args.pool}
    for flag in ("name", "model", "prefix", "type", "api_key_env", "max_concurrency",
                 "wake_timeout_s"):
        if getattr(args, flag) is not None:  # else the config's own default
            backend[flag] = getattr(args, flag)
    if args.wake_command:
        backend["wake"] = {"command": shlex.split(args.wake_command)}
    if args.sleep_command:
        backend["sleep"] = {"command": shlex.split(args.sleep_command)}
    if args.idle_sleep_s is not None:
        backend["idle_sleep_s"] = args.idle_sleep_s
    urls = [args.backend] if args.backend else found_locally(args.hub)
    data: dict = {"backends": [{**backend, "base_url": url} for url in urls]}
    data.update((k, getattr(args, k)) for k in GENERAL_FLAGS if getattr(args, k))
    if args.no_result_channel:
        data["result_channel"] = False
    return parse(data, "command line")


def local_ports() -> list[tuple[int, str]]:
    """The ports probed for local servers. TETHER_LOCAL_PORTS (`port,port…`) is for the
    tests only: they cannot count on the usual ports being free on their machine."""
    given = os.environ.get("TETHER_LOCAL_PORTS")
    if not given:
        return list(LOCAL_SERVERS)
    known = dict(LOCAL_SERVERS)
    return [(int(p), known.get(int(p), "a server")) for p in given.split(",") if p.strip()]


def found_locally(hubs: list[str]) -> list[str]:
    """The base URLs of the servers found on the loopback address (printed), never the
    hub's own; none is an error naming the ports tried."""
    ports = local_ports()
    avoid = set()
    for hub in hubs:
        parts = urllib.parse.urlsplit(hub)
        if parts.hostname and parts.port:
            avoid.add((parts.hostname, parts.port))
    found = find_local([port for port, _ in ports], avoid)
    tried = ", ".join(f"{port} ({what})" for port, what in ports)
    if not found:
        raise PublisherConfigError(f"command line: no backend given and no local server "
                                   f"answers GET /v1/models on 127.0.0.1 ports {tried}")
    for url in found:
        print(f"tether publish: found {url}; publishing every model it lists", flush=True)
    return found


def as_flags(args: argparse.Namespace) -> list[str]:
    """The flags that give `args` again (what an installed service runs)."""
    out: list[str] = []
    for key in ("config", *GENERAL_FLAGS, "no_result_channel", *BACKEND_FLAGS):
        value = getattr(args, key)
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            out += [flag] if value else []
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    from tether.publisher import service_install

    if args.uninstall_service:
        return service_install.uninstall()
    try:
        config = config_from_args(args)
    except PublisherConfigError as exc:
        print(f"tether publish: {exc}", file=sys.stderr)
        return 2
    if args.install_service:  # the arguments made a valid config: the service runs them
        return service_install.install(as_flags(args))
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from tether.publisher.agent import Publisher
    from tether.publisher.session_file import SessionFileBusy

    # The hub's formats (text or JSON); at `info` every task logs a line.
    logs.setup(config.log_level, config.log_format)
    try:
        publisher = Publisher(config)
    except SessionFileBusy as exc:
        print(f"tether publish: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tether publish: cannot open the session file {config.session_path}: {exc}",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, publisher.shutdown)
    if os.environ.get("TETHER_FAULT_INJECTION") == "1":  # tests only, as on the hub
        gevent.signal_handler(signal.SIGUSR1, publisher.crash_backend)
    publisher.run()
    return 0
