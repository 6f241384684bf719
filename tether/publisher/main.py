"""`tether publish`: build the config (file or flags) and run the agent under gevent."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from tether.common import logs
from tether.publisher.config import PublisherConfig, PublisherConfigError, load, parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="publisher TOML (see conf/publisher.example.toml)")
    parser.add_argument("--hub", action="append",
                        help="hub URL, e.g. http://127.0.0.1:8080; repeat it for several hub "
                             "processes (tried in order; a loss moves to the next)")
    parser.add_argument("--name", help="the Llm name on the hub")
    parser.add_argument("--model", help="the model name the backend expects")
    parser.add_argument("--backend", help="backend base URL, e.g. http://127.0.0.1:11434/v1")
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


# Flags that describe the one backend of a flags-only publisher; a config file lists its own.
BACKEND_FLAGS = ("name", "model", "backend", "type", "api_key_env", "max_concurrency", "pool",
                 "wake_command", "sleep_command", "idle_sleep_s", "wake_timeout_s")

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
        return load(args.config, overrides)
    missing = [f"--{k}" for k in ("hub", "name", "model", "backend") if not getattr(args, k)]
    if missing:
        raise PublisherConfigError(
            f"command line: give --config FILE, or all of --hub --name --model --backend "
            f"(missing {' '.join(missing)})")
    backend: dict = {"name": args.name, "model": args.model, "base_url": args.backend,
                     "pool": args.pool}
    for flag in ("type", "api_key_env", "max_concurrency", "wake_timeout_s"):
        if getattr(args, flag) is not None:  # else the config's own default
            backend[flag] = getattr(args, flag)
    if args.wake_command:
        backend["wake"] = {"command": shlex.split(args.wake_command)}
    if args.sleep_command:
        backend["sleep"] = {"command": shlex.split(args.sleep_command)}
    if args.idle_sleep_s is not None:
        backend["idle_sleep_s"] = args.idle_sleep_s
    data: dict = {"backends": [backend]}
    data.update((k, getattr(args, k)) for k in GENERAL_FLAGS if getattr(args, k))
    return parse(data, "command line")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except PublisherConfigError as exc:
        print(f"tether publish: {exc}", file=sys.stderr)
        return 2
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
