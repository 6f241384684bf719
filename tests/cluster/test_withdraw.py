"""A client that leaves before its request was dispatched (docs/protocol.md, Several hub
processes): on a process that does not own the name, its request is withdrawn at the owner
by its request id, so no task ever goes out for it."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import SLEEPY, in_background, online, result_of
from tests.support.hub import Hub, wait_until

pytestmark = pytest.mark.timeout(90)


def test_a_client_gone_before_dispatch_is_withdrawn_at_the_owner(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pub, stream = online(a, SLEEPY)  # a owns sleepy
    with socket.create_connection(("127.0.0.1", b.port)) as sock:
        body = json.dumps({"messages": [{"role": "user", "content": "gone"}]}).encode()
        sock.sendall(b"POST /api/v1/llms/sleepy/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wake = stream.next_task("wake", timeout=10)  # the request waits at a for the wake
        wait_until(shows(a, "sleepy", queued=1), timeout=10)
    # The client hung up on b: its request leaves a's queue.
    wait_until(shows(a, "sleepy", queued=0), timeout=10)
    # The wake ends and a later request goes out: the first task on the stream is the
    # later one's, none ever went out for the request withdrawn.
    later = in_background(lambda: b.infer("sleepy", "later"))
    wait_until(shows(a, "sleepy", queued=1), timeout=10)
    assert pub.result(wake["taskId"], {"status": 200, "body": None}).status_code == 200
    task = stream.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == "later"
    pub.result(task["taskId"], {"status": 200, "body": "later"})
    assert result_of(later).json() == "later"
    pub.close()
