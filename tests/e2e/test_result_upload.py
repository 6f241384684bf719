"""A streamed result (NDJSON upload) the publisher cuts off: the task was cancelled, a normal
event, so the hub logs one INFO line and answers no 500 (docs/protocol.md, Task result)."""

from __future__ import annotations

import json
import socket

import requests

from tests.support.hub import wait_until

ROUTE = "/api/v1/llms/_provider-task/{task_id}/result"


def test_a_result_upload_cut_midway_is_one_info_line_and_no_500(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    client = requests.post(f"{hub.url}/api/v1/llms/m1/infer", json=body, stream=True,
                           timeout=20, headers={"Connection": "close"})
    task = stream.next_task("infer")
    line = json.dumps({"chunks": [{"data": json.dumps({"choices": []})}]}).encode() + b"\n"
    line += b" " * 1023 + b"\n"  # gunicorn reads a chunked body 1 KiB at a time
    with socket.create_connection(("127.0.0.1", hub.port)) as upload:
        upload.sendall(
            f"POST {ROUTE.format(task_id=task['taskId'])} HTTP/1.1\r\nHost: hub\r\n"
            f"Content-Type: application/x-ndjson\r\n"
            f"X-Provider-Session-Id: {publisher.session_id}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%s\r\n" % (len(line), line))
        lines = client.iter_lines()
        # The chunk reached the client: the hub was reading the upload when it was cut.
        assert next(x for x in lines if x.startswith(b"data:")) == b'data: {"choices": []}'
    # The publisher's cancel killed its upload; the hub hears the cut as the socket closes.
    wait_until(lambda: "upload" in hub.logs())
    client.close()
    logs = hub.logs()
    assert "unhandled error" not in logs and "NoMoreData" not in logs, logs
    cut = [x for x in logs.splitlines() if "upload" in x and task["taskId"] in x]
    assert len(cut) == 1 and " INFO " in cut[0], logs
    assert hub.metric("tether_http_responses_total", route=ROUTE, method="POST",
                      status="500") == 0
