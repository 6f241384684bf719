"""`tether publish --install-service` / `--uninstall-service` (README, Running the publisher
as a service): the files it writes, in a temporary HOME, and the service manager commands
it runs (a `systemctl` on PATH that records them). Where systemd is installed, the unit
passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import TETHER
from tether.publisher import service_install

pytestmark = pytest.mark.timeout(60)

RECORDER = """#!/bin/sh
echo "$0 $*" >> "{log}"
"""


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME and XDG_CONFIG_HOME are temporary, and whose systemctl
    and launchctl record what they are asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "launchctl"):
        path = bin_dir / tool
        path.write_text(RECORDER.format(log=tmp_path / "manager.log"))
        path.chmod(0o755)
    return {**os.environ, "HOME": str(tmp_path / "home"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def publish(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TETHER, "publish", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_install_writes_a_user_unit_with_the_same_arguments_and_enables_it(
        home, tmp_path):
    conf = tmp_path / "publisher.toml"
    conf.write_text('hub = "http://127.0.0.1:9"\n\n[[backends]]\n'
                    'base_url = "http://127.0.0.1:11434/v1"\nprefix = "gpu-"\n')
    done = publish(home, "--install-service", "--config", str(conf), "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    unit = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "tether-publish.service"
    text = unit.read_text()
    assert (f"ExecStart={sys.executable} -m tether.cli publish --config {conf} "
            "--log-level debug\n") in text
    assert "Restart=on-failure\n" in text
    assert "StandardOutput=journal\n" in text and "WantedBy=default.target\n" in text
    assert "--install-service" not in text
    assert "journalctl --user -u tether-publish" in done.stdout
    assert "loginctl enable-linger" in done.stdout
    manager = (tmp_path / "manager.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in manager] == [
        "--user daemon-reload", "--user enable --now tether-publish.service"]
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)],
                                capture_output=True, text=True, timeout=30)
        assert verify.returncode == 0, verify.stderr
    done = publish(home, "--uninstall-service")
    assert done.returncode == 0, done.stderr
    assert not unit.exists()
    manager = (tmp_path / "manager.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in manager[2:]] == [
        "--user disable --now tether-publish.service", "--user daemon-reload"]


def test_install_refuses_a_config_that_would_not_start(home, tmp_path):
    done = publish(home, "--install-service", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "config file not found" in done.stderr
    assert not (Path(home["XDG_CONFIG_HOME"]) / "systemd").exists()


def test_a_failing_service_manager_is_reported_with_the_commands_to_run(home, tmp_path):
    failing = Path(home["PATH"].split(":")[0]) / "systemctl"
    failing.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    done = publish(home, "--install-service", "--hub", "http://127.0.0.1:9", "--backend",
                   "http://127.0.0.1:11434/v1")
    assert done.returncode == 1
    assert "Failed to connect to bus" in done.stderr
    assert "systemctl --user enable --now tether-publish.service" in done.stderr
    unit = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "tether-publish.service"
    assert "--hub http://127.0.0.1:9 --backend http://127.0.0.1:11434/v1" in unit.read_text()


def test_the_launchd_agent_restarts_on_failure_and_logs_to_a_file(home, monkeypatch):
    monkeypatch.setenv("HOME", home["HOME"])
    monkeypatch.setenv("PATH", home["PATH"])
    assert service_install.install(["--hub", "http://h:1"], platform="darwin") == 0
    path = Path(home["HOME"]) / "Library" / "LaunchAgents" / "dev.tether.publish.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["ProgramArguments"] == [sys.executable, "-m", "tether.cli", "publish",
                                         "--hub", "http://h:1"]
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert agent["StandardErrorPath"].endswith("Library/Logs/tether-publish.log")
    assert service_install.uninstall(platform="darwin") == 0
    assert not path.exists()
