"""A publisher that dies part-way through posting a result (its connection closes mid-body)
is a routine event for the hub: one line, no traceback, no "unhandled error"."""

from __future__ import annotations

import concurrent.futures as cf
import socket

import pytest
import requests

from tests.support.hub import wait_until

CUTS = {
    "ndjson mid-chunk": (b"Content-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n", b"40\r\n{\"chunk\": {\"da"),
    "ndjson mid-size": (b"Content-Type: application/x-ndjson\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n", b"4"),
    "chunked json mid-chunk": (b"Content-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n",
                               b"40\r\n{\"status\": 200, \"bo"),
    "json mid-body": (b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n",
                      b"{\"status\": 200, \"bo"),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_result_upload_cut_mid_body_logs_no_traceback(hub, publisher, cut):
    publisher.register("llama")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{hub.url}/api/v1/llms/llama/infer", timeout=20,
                             json={"messages": [{"role": "user", "content": "hi"}]},
                             headers={"Connection": "close"})
        task = stream.next_task("infer")
        headers, body = CUTS[cut]
        with socket.create_connection(("127.0.0.1", hub.port)) as sock:
            sock.sendall(f"POST /api/v1/llms/_provider-task/{task['taskId']}/result "
                         f"HTTP/1.1\r\nHost: x\r\n".encode() + headers + body)
        # The hub has read what there was: its answer (if any) went to nobody.
        wait_until(lambda: f"{task['taskId']}/result" in hub.logs() or
                   f"task {task['taskId']}: its result upload was cut" in hub.logs(),
                   timeout=5)
        assert publisher.result(task["taskId"], {"status": 200, "body": {"ok": 1}}) \
            .status_code in (200, 404)
        answer.result(timeout=20)
    logs = hub.logs()
    assert "Traceback" not in logs and "unhandled error" not in logs, logs
