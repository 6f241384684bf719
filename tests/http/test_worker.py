"""The hub's gunicorn worker (tether.http.worker) holds a response's headers back to send
them with its body: every kind of response must still be framed exactly, which one
keep-alive connection shows (a framing error garbles the next response on it)."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json

from tether.common import sse


def _chat(stream: bool) -> bytes:
    return json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}],
                       "stream": stream}).encode()


def test_every_kind_of_response_is_framed_on_one_keep_alive_connection(hub, publisher):
    publisher.register("m1")
    tasks = publisher.open()
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=20)
    post = {"Content-Type": "application/json"}
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"

        conn.request("HEAD", "/healthz")  # headers only, though the answer has a body
        r = conn.getresponse()
        assert int(r.getheader("Content-Length")) > 0 and r.read() == b""

        conn.request("GET", "/no/such/route")
        r = conn.getresponse()
        assert r.status == 404 and r.read()

        with cf.ThreadPoolExecutor(1) as pool:
            # A body past the size the worker joins to its headers (64 KiB).
            big = {"id": "x", "text": "y" * 200_000}
            conn.request("POST", "/v1/chat/completions", _chat(False), post)
            task = tasks.next_task("infer")
            pool.submit(publisher.result, task["taskId"], {"status": 200, "body": big})
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read()) == big

            # A chunked body: a streamed completion, its terminator last.
            conn.request("POST", "/v1/chat/completions", _chat(True), post)
            task = tasks.next_task("infer")
            chunks = [sse.dumps({"choices": [{"delta": {"content": f"w{i}"}}]})
                      for i in range(3)]
            pool.submit(publisher.result, task["taskId"],
                        {"chunks": [{"data": c} for c in chunks[:2]]}).result()
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
            pool.submit(publisher.result, task["taskId"],
                        {"chunk": {"data": chunks[2], "done": True}})
            items = [i for i in sse.parse(sse.iter_lines([r.read()])) if not isinstance(i, str)]
            assert [i.data for i in items] == [*chunks, "[DONE]"]

        conn.request("GET", "/v1/models", headers={"Connection": "close"})
        r = conn.getresponse()
        assert r.status == 200 and [m["id"] for m in json.loads(r.read())["data"]] == ["m1"]
    finally:
        conn.close()
