"""`tether status` against a real hub: the table, the errors, colour only on a terminal, and
the key with auth on."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pty
import subprocess
import time

from tests.e2e.test_security import KeyedPublisher, make_key
from tests.support.procs import TETHER
from tether.cli import main


def status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TETHER, "status", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "NO_COLOR": "", **(env or {})})


def on_a_terminal(*args: str) -> str:
    """Run with stdout on a pseudo-terminal; return what it printed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*TETHER, "status", *args], stdout=follower, stderr=follower,
                            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(10)
    os.close(leader)
    return out.decode()


def _row(out: str, name: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [name])


def test_the_table_from_a_real_hub(hub, publisher):
    publisher.register("alpha")
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "alpha")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": "nope", "code": "oom"}})
        assert pending.result().status_code == 502
        # A wake under way shows as waking, with its request queued.
        pending = pool.submit(hub.infer, "sleepy")
        wake = stream.next_task("wake")
        done = status("--hub", hub.url)
        publisher.result(wake["taskId"], {"status": 200, "body": None})
        publisher.result(stream.next_task("infer")["taskId"], {"status": 200, "body": {}})
        assert pending.result().status_code == 200

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out  # not a terminal: no colour
    lines = out.splitlines()
    assert lines[0] == f"Tether hub {hub.url}: 2 Llms (1 active, 1 waking)"
    assert "1 publisher session(s), 1 stream(s) open" in lines[1]
    assert lines[3].split() == ["NAME", "STATUS", "KIND", "SESSION", "IN-FLIGHT", "QUEUED",
                                "LAST", "WAKE"]
    assert _row(out, "alpha")[:6] == ["alpha", "active", "virtual", publisher.session_id, "0",
                                      "0"]
    assert _row(out, "sleepy")[:6] == ["sleepy", "waking", "virtual", publisher.session_id,
                                       "0", "1"]
    assert "Recent errors:" in out
    assert _row(out, "WHEN") == ["WHEN", "LLM", "STATUS", "CODE"]
    assert any(line.split()[1:] == ["alpha", "502", "oom"] for line in lines
               if len(line.split()) == 4)

    after = status("--hub", hub.url).stdout
    sleepy = _row(after, "sleepy")
    assert sleepy[1] == "active" and sleepy[-1] == "succeeded"

    painted = on_a_terminal("--hub", hub.url)
    assert "\x1b[32mactive" in painted  # green, on a terminal


def test_auth_on_needs_a_key_from_the_named_env_var(hub_factory, capsys, monkeypatch):
    hub = hub_factory(auth="on")
    admin = make_key(hub, "admin", "root")
    reader = make_key(hub, "client", "viewer")
    KeyedPublisher(hub.url, admin).register("alpha")

    def run(*args: str) -> tuple[int, str, str]:  # the same command, in this process
        code = main(["status", "--hub", hub.url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = run()
    assert code == 2 and "--key-env" in err
    monkeypatch.setenv("MY_KEY", "nope")
    code, _, err = run("--key-env", "MY_KEY")
    assert code == 2 and "$MY_KEY was refused" in err
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    code, _, err = run("--key-env", "NO_SUCH_VAR")
    assert code == 2 and "NO_SUCH_VAR" in err
    monkeypatch.setenv("MY_KEY", reader)
    code, out, err = run("--key-env", "MY_KEY")
    assert code == 0, err
    assert _row(out, "alpha")[0] == "alpha"


def test_an_unreachable_hub_is_one_line_and_exit_1(tmp_path):
    done = status("--hub", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.startswith("tether status: cannot read http://127.0.0.1:9/status/state")
    assert len(done.stderr.strip().splitlines()) == 1
