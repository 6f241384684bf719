"""`tether publish --install-service` / `--uninstall-service`: the publisher as a service of
the user's, started at boot and restarted on failure, with the same arguments.

Linux: a systemd user unit (`~/.config/systemd/user/tether-publish.service`, or under
$XDG_CONFIG_HOME), enabled with `systemctl --user enable --now`; its output goes to the
journal (`journalctl --user -u tether-publish`). A machine nobody logs into needs `loginctl
enable-linger` for user services to start at boot: we say so. macOS: a launchd agent
(`~/Library/LaunchAgents/dev.tether.publish.plist`), loaded with `launchctl`, its output in
`~/Library/Logs/tether-publish.log`.

Keys live in the environment (`key_env`, `api_key_env`): a unit does not inherit the shell's,
so the unit reads `~/.config/tether/publisher.env` (KEY=value lines) when it exists.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

UNIT = "tether-publish.service"
LABEL = "dev.tether.publish"
# This command's own flags, not the service's.
OWN_FLAGS = ("--install-service", "--uninstall-service")
# Flags whose value is a path: made absolute, since the service does not start where we are.
PATH_FLAGS = ("--config", "--session-file")


def service_argv(argv: Sequence[str]) -> list[str]:
    """The command the service runs: this Python, `tether publish`, the same arguments."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in OWN_FLAGS:
            i += 1
            continue
        flag, eq, value = arg.partition("=")
        if flag in PATH_FLAGS and eq:
            out.append(f"{flag}={os.path.abspath(value)}")
        elif arg in PATH_FLAGS and i + 1 < len(args):
            out += [arg, os.path.abspath(args[i + 1])]
            i += 1
        else:
            out.append(arg)
        i += 1
    return [sys.executable, "-m", "tether.cli", "publish", *out]


def _config_home() -> Path:
    given = os.environ.get("XDG_CONFIG_HOME")
    return Path(given) if given else Path.home() / ".config"


def unit_path() -> Path:
    return _config_home() / "systemd" / "user" / UNIT


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def env_file() -> Path:
    return _config_home() / "tether" / "publisher.env"


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: `%` and `$` are systemd's own specifiers, so they are doubled."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in ' \t"\'\\;'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(argv: Sequence[str]) -> str:
    command = " ".join(_systemd_quote(a) for a in argv)
    return f"""[Unit]
Description=Tether publisher (tether publish)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={command}
# Keys (key_env, api_key_env) as KEY=value lines; the file is optional.
EnvironmentFile=-{_systemd_quote(str(env_file()))}
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=5
# Its log: journalctl --user -u tether-publish
StandardOutput=journal
StandardError=journal
SyslogIdentifier=tether-publish

[Install]
WantedBy=default.target
"""


def plist_bytes(argv: Sequence[str]) -> bytes:
    log = str(Path.home() / "Library" / "Logs" / "tether-publish.log")
    return plistlib.dumps({
        "Label": LABEL,
        "ProgramArguments": list(argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not when stopped
        "ThrottleInterval": 5,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "StandardOutPath": log,
        "StandardErrorPath": log,
    })


def _run(command: list[str]) -> str | None:
    """Run a service manager command; None if it worked, else why not."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not installed"
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
    return None


def _manage(commands: list[list[str]]) -> int:
    for command in commands:
        failed = _run(command)
        if failed is not None:
            print(f"tether publish: `{' '.join(command)}` failed: {failed}\n"
                  f"run it yourself once it can work: "
                  + "; ".join(" ".join(c) for c in commands), file=sys.stderr)
            return 1
    return 0


def install(argv: Sequence[str], platform: str = sys.platform) -> int:
    command = service_argv(argv)
    if platform == "darwin":
        path = plist_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(plist_bytes(command))
        print(f"wrote {path}")
        uid = os.getuid()
        print(f"its log: {Path.home() / 'Library' / 'Logs' / 'tether-publish.log'}")
        return _manage([["launchctl", "bootstrap", f"gui/{uid}", str(path)]])
    if not platform.startswith("linux"):
        print(f"tether publish: --install-service knows systemd (Linux) and launchd (macOS), "
              f"not {platform}", file=sys.stderr)
        return 2
    path = unit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(command))
    print(f"wrote {path}\nits log: journalctl --user -u tether-publish\n"
          f"keys (key_env, api_key_env) go in {env_file()} as KEY=value lines\n"
          f"on a machine nobody logs into, let it start at boot: "
          f"loginctl enable-linger {os.environ.get('USER', '$USER')}")
    return _manage([["systemctl", "--user", "daemon-reload"],
                    ["systemctl", "--user", "enable", "--now", UNIT]])


def uninstall(platform: str = sys.platform) -> int:
    if platform == "darwin":
        path = plist_path()
        status = _manage([["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"]]) \
            if path.exists() else 0
    else:
        path = unit_path()
        status = _manage([["systemctl", "--user", "disable", "--now", UNIT]]) \
            if path.exists() else 0
    if path.exists():
        path.unlink()
        print(f"removed {path}")
        if platform != "darwin":
            _manage([["systemctl", "--user", "daemon-reload"]])
    else:
        print(f"no service installed ({path} does not exist)")
    return status
