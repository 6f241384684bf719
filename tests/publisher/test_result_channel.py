"""`tether publish` and the result channel, for real (hub, publisher, demo backend, each its own
process; docs/protocol.md, `_provider-results`): results travel on it by default and not with
`result_channel = false`; a hub without the route gets each result by its own POST; an
upload whose answer is lost is sent again and applied once."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent.event
import pytest
import requests

from tests.support.chaos import Listener
from tests.support.hub import wait_until
from tests.support.procs import wait_status
from tether.publisher.channel import ResultChannel
from tether.publisher.config import PublisherConfigError
from tether.publisher.hub_client import HubClient
from tether.publisher.tasks import TaskGone

CHANNEL = "/api/v1/llms/_provider-results"
PER_TASK = "/api/v1/llms/_provider-task/{task_id}/result"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class Tap(Listener):
    """A TCP proxy in front of the hub that sees each channel upload whole. `mode`:
    "refuse" answers it as a hub without the route would (404 not_found); "swallow" lets the
    hub read it but drops the hub's answer and closes the connection, once (a break after
    the lines were applied); None passes it on. Every answer the hub gave to a channel
    upload is kept in `answers`."""

    def __init__(self, target_port: int, mode: str | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.mode = mode
        self.answers: list[dict] = []
        self.swallowed = 0
        self.refused = 0
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            first = client.recv(65536)
            if not first:
                return
            if first.startswith(f"POST {CHANNEL} ".encode()):
                self._channel(client, first)
            else:
                self._pipe(client, first)
        with contextlib.suppress(OSError):
            client.close()

    def _pipe(self, client: socket.socket, first: bytes) -> None:
        upstream = socket.create_connection(self.target)
        self._socks.append(upstream)
        upstream.sendall(first)

        def back() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=back, daemon=True).start()
        while data := client.recv(65536):
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)

    def _channel(self, client: socket.socket, first: bytes) -> None:
        body = first
        if self.mode == "refuse":
            while not body.endswith(b"0\r\n\r\n"):  # the upload's end: then it reads
                data = client.recv(65536)
                if not data:
                    return
                body += data
            self.refused += 1
            error = json.dumps({"error": {"message": "no such route", "type":
                                          "invalid_request_error", "code": "not_found",
                                          "param": None}}).encode()
            client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(error), error))
            return
        upstream = socket.create_connection(self.target)
        self._socks.append(upstream)
        upstream.sendall(first)
        answer = b""

        def forward() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    upstream.sendall(data)

        threading.Thread(target=forward, daemon=True).start()
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < \
                _length(answer):
            data = upstream.recv(65536)
            if not data:
                break
            answer += data
        upstream.close()
        if not answer:
            return  # the hub stopped (the test's end) with this upload open
        self.answers.append(json.loads(answer.partition(b"\r\n\r\n")[2]))
        if self.mode == "swallow" and not self.swallowed:
            self.swallowed += 1  # the hub applied the lines; the publisher never hears it
            client.shutdown(socket.SHUT_RDWR)  # wakes the forwarding thread too
            return
        client.sendall(answer)


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture
def tap(hub) -> Iterator[callable]:
    taps: list[Tap] = []

    def make(mode: str | None = None) -> Tap:
        taps.append(Tap(hub.port, mode))
        return taps[-1]

    yield make
    for t in taps:
        t.close()


def chats(hub, n: int) -> list[requests.Response]:
    with cf.ThreadPoolExecutor(n) as pool:
        calls = [pool.submit(requests.post, f"{hub.url}/api/v1/llms/llama/infer", json=CHAT,
                             timeout=30, headers={"Connection": "close"}) for _ in range(n)]
        return [call.result() for call in calls]


def stream(hub, reply: str, delay_s: float = 0.0) -> requests.Response:
    r = requests.post(f"{hub.url}/api/v1/llms/llama/infer", timeout=30, headers={
        "Connection": "close"}, json={**CHAT, "stream": True, "demo_reply": reply,
                                      "demo_delay_s": delay_s})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    return r


def text_of(answer: requests.Response) -> str:
    """The text a streamed chat answer's chunks carry, in order."""
    return "".join(json.loads(line[len("data: "):])["choices"][0]["delta"]["content"]
                   for line in answer.text.splitlines()
                   if line.startswith("data: {"))


def served(hub, route: str) -> float:
    return hub.metric("tether_http_responses_total", route=route, method="POST",
                      status="200")


def spec(backend) -> dict:
    return {"name": "llama", "model": "demo-model", "base_url": backend.base_url,
            "max_concurrency": 8}


@pytest.mark.parametrize("channel", [True, False])
def test_results_travel_on_the_channel_unless_it_is_turned_off(hub, backend_factory,
                                                               publishing, channel):
    publish = publishing(hub.url, [spec(backend_factory())], result_channel=channel)
    wait_status(hub, "llama", "active")
    answers = chats(hub, 6)
    assert [r.status_code for r in answers] == [200] * 6
    assert all(r.json()["model"] == "llama" for r in answers)
    if channel:
        assert served(hub, PER_TASK) == 0
        assert served(hub, CHANNEL) >= 1
        assert "results travel on the result channel of" in publish.logs()
    else:
        assert served(hub, PER_TASK) == 6
        assert served(hub, CHANNEL) == 0
    # A stream travels on the channel too (the hub's `hello` said it takes chunks), else on
    # an upload of its own; its answer is the same either way.
    assert text_of(stream(hub, "one two three four")) == "one two three four"
    if channel:
        assert served(hub, PER_TASK) == 0
    else:
        wait_until(lambda: served(hub, PER_TASK) == 7)


def test_a_hub_without_the_channel_gets_each_result_by_its_own_post(hub, backend_factory,
                                                                     publishing, tap):
    front = tap("refuse")
    publish = publishing(front.url, [spec(backend_factory())])
    wait_status(hub, "llama", "active")
    assert [r.status_code for r in chats(hub, 4)] == [200] * 4
    assert [r.status_code for r in chats(hub, 3)] == [200] * 3
    # Asked once: the publisher remembers this hub has none.
    assert front.refused == 1
    assert served(hub, PER_TASK) == 7 and served(hub, CHANNEL) == 0
    assert "offers no result channel" in publish.logs()


def test_an_upload_whose_answer_is_lost_is_sent_again_and_applied_once(hub, backend_factory,
                                                                       publishing, tap):
    front = tap("swallow")
    publish = publishing(front.url, [spec(backend_factory())])
    wait_status(hub, "llama", "active")
    first = chats(hub, 1)[0]
    assert first.status_code == 200
    # The hub applied the line, its answer was lost, the publisher sent it again: the hub
    # skipped it as handled, and confirmed it.
    wait_until(lambda: len(front.answers) >= 2, timeout=10)
    assert front.answers[0] == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}
    assert front.answers[1] == {"ok": True, "applied": 1, "duplicates": 1, "refused": []}
    assert "result channel broke" in publish.logs()
    # And the channel goes on.
    assert [r.status_code for r in chats(hub, 3)] == [200] * 3
    assert served(hub, PER_TASK) == 0


def test_a_streams_lines_sent_again_after_a_lost_answer_show_once(hub, backend_factory,
                                                                   publishing, tap):
    """The first upload carries a stream's first lines and its answer is lost: they are
    sent again with the rest, and the client reads each chunk once."""
    front = tap("swallow")
    publish = publishing(front.url, [spec(backend_factory())])
    wait_status(hub, "llama", "active")
    words = "w0 w1 w2 w3 w4 w5 w6 w7"
    assert text_of(stream(hub, words, delay_s=0.05)) == words
    wait_until(lambda: len(front.answers) >= 2, timeout=10)
    assert front.answers[1]["duplicates"] >= 1, front.answers
    assert "result channel broke" in publish.logs()
    assert served(hub, PER_TASK) == 0


class ChannelDoor:
    """A stand-in hub whose channel answers 503 hub_busy `refusals` times, confirming the
    first `confirm` lines of each refused upload (a line after them could not reach its
    home), then 200 confirming them all; it records each upload's lines."""

    def __init__(self, refusals: int, confirm: int = 0, gone: tuple[str, ...] = ()) -> None:
        self.refusals, self.confirm, self.gone = refusals, confirm, gone
        self.uploads: list[list[dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()  # the empty trailer line
                lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                outer.uploads.append(lines)
                refused = len(outer.uploads) <= outer.refusals
                seqs = [x["seq"] for x in lines]
                if refused:
                    applied = seqs[outer.confirm - 1] if outer.confirm else seqs[0] - 1
                    answer: dict = {"error": {"code": "hub_busy"}, "applied": applied}
                else:
                    answer = {"ok": True, "applied": seqs[-1], "duplicates": 0, "refused": [
                        {"seq": x["seq"], "taskId": x["taskId"], "code": "task_not_found"}
                        for x in lines if x["taskId"] in outer.gone]}
                data = json.dumps(answer).encode()
                self.send_response(503 if refused else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def door() -> Iterator[Callable[..., ChannelDoor]]:
    made: list[ChannelDoor] = []

    def make(refusals: int, confirm: int = 0, gone: tuple[str, ...] = ()) -> ChannelDoor:
        made.append(ChannelDoor(refusals, confirm, gone))
        return made[-1]

    yield make
    for d in made:
        d.close()


def channel_to(url: str) -> tuple[ResultChannel, HubClient, list[str]]:
    hub = HubClient(url, None)
    posted: list[str] = []  # task ids that went by their own POST
    channel = ResultChannel(hub, lambda: "s1", lambda task_id, _r, _d: posted.append(task_id))
    hub.results = channel
    return channel, hub, posted


def test_a_line_refused_503_goes_by_its_own_post_and_the_rest_go_on(door):
    """A line whose task's home is out of reach (503 part-way) must not hold up the lines
    behind it: it takes the per-task route's retries, and the channel goes on at once."""
    hub = door(1, confirm=1)
    channel, client, posted = channel_to(hub.url)
    deadline = time.monotonic() + 60
    for n in (1, 2, 3):  # queued before the channel's first upload goes out
        assert channel.post(f"t{n}", {"status": 200, "body": n}, deadline)
    assert channel.flush(30)
    channel.stop()
    client.close()
    # The 503 confirmed seq 1; seq 2 was the line refused: by its own POST; seq 3, only
    # that, on the channel again, where the hub took it.
    assert [[x["seq"] for x in lines] for lines in hub.uploads] == [[1, 2, 3], [3]]
    assert hub.uploads[0][0] == {"seq": 1, "taskId": "t1", "status": 200, "body": 1}
    assert posted == ["t2"]


def chunk_line(index: int, text: str, done: bool = False) -> dict:
    return {"index": index, "chunks": [{"data": text}] + ([{"done": True}] if done else [])}


def test_a_stream_refused_503_goes_on_by_posts_in_its_order(door):
    """A stream's line the hub cannot take now (503 part-way) takes the rest of its task's
    lines with it to per-task POSTs, one at a time, in order, those made later too: its
    chunks never overtake each other. Other tasks' lines go on the channel again."""
    hub = door(1)  # refuses the first upload at its first line
    client = HubClient(hub.url, None)
    posted: list[tuple[str, Any]] = []
    first_post = gevent.event.Event()
    release = gevent.event.Event()

    def post_one(task_id: str, result: dict, _deadline: float) -> None:
        posted.append((task_id, result.get("index", result.get("status"))))
        first_post.set()
        release.wait()  # the first POST is still under way when the stream's next line comes

    channel = ResultChannel(client, lambda: "s1", post_one)
    client.results = channel
    deadline = time.monotonic() + 60
    for task_id, line in (("s", chunk_line(0, "a")), ("r", {"status": 200, "body": 1}),
                          ("s", chunk_line(1, "b"))):
        assert channel.post(task_id, line, deadline)
    assert first_post.wait(10)
    assert channel.post("s", chunk_line(2, "c", done=True), deadline)  # joins the POSTs
    release.set()
    assert channel.flush(30)
    channel.stop()
    client.close()
    assert [[(x["taskId"], x["seq"]) for x in lines] for lines in hub.uploads] == [
        [("s", 1), ("r", 2), ("s", 3)], [("r", 2)]]
    assert posted == [("s", 0), ("s", 1), ("s", 2)]


def test_a_task_the_hub_no_longer_knows_is_stopped(door):
    """A line refused 404 (its task ended at the hub: the client left, a timeout) stops the
    publisher's work on that task, as a cancel does; so does a POST of its refused 404."""
    hub = door(1, gone=("ended",))  # the first line is refused 503: it goes by a POST
    client = HubClient(hub.url, None)
    stopped: list[str] = []

    def post_one(task_id: str, _result: dict, _deadline: float) -> None:
        raise TaskGone(task_id)  # the hub answered the POST 404

    channel = ResultChannel(client, lambda: "s1", post_one, gone=stopped.append)
    client.results = channel
    deadline = time.monotonic() + 60
    for task_id in ("posted", "ended", "going"):
        assert channel.post(task_id, chunk_line(0, task_id), deadline)
    assert channel.flush(30)
    channel.stop()
    client.close()
    assert [[x["taskId"] for x in lines] for lines in hub.uploads] == [
        ["posted", "ended", "going"], ["ended", "going"]]
    assert sorted(stopped) == ["ended", "posted"]


def test_lines_unconfirmed_until_their_deadline_are_dropped():
    """No hub answers at all (nothing listens): the lines are sent again with backoff until
    their task's deadline, then dropped (the hub answered their clients by then)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        channel, client, posted = channel_to(url)
        assert channel.post("t1", {"status": 200, "body": {}}, time.monotonic() + 1.0)
        assert channel.flush(10)  # nothing left: dropped at its deadline
        channel.stop()
        client.close()
    assert posted == []


def publish_args(*argv: str) -> Any:
    import argparse

    from tether.publisher import main

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_channel_is_on_by_default_and_off_by_flag_or_setting(tmp_path):
    from tether.publisher import main

    flags = ["--hub", "http://127.0.0.1:9", "--backend", "http://127.0.0.1:9/v1",
             "--name", "llama", "--model", "m"]
    assert main.config_from_args(publish_args(*flags)).result_channel is True
    off = publish_args(*flags, "--no-result-channel")
    assert main.config_from_args(off).result_channel is False
    assert "--no-result-channel" in main.as_flags(off)  # an installed service keeps it
    toml = tmp_path / "publisher.toml"
    toml.write_text('hub = "http://127.0.0.1:9"\nresult_channel = false\n\n[[backends]]\n'
                    'base_url = "http://127.0.0.1:9/v1"\nname = "llama"\nmodel = "m"\n')
    assert main.config_from_args(publish_args("--config", str(toml))).result_channel is False
    toml.write_text(toml.read_text().replace("result_channel = false\n", ""))
    on = main.config_from_args(publish_args("--config", str(toml)))
    assert on.result_channel is True
    assert main.config_from_args(publish_args("--config", str(toml), "--no-result-channel")) \
        .result_channel is False
    toml.write_text(toml.read_text().replace('hub = "http://127.0.0.1:9"\n',
                                             'hub = "http://127.0.0.1:9"\nresult_channel = 1\n'))
    with pytest.raises(PublisherConfigError, match="result_channel"):
        main.config_from_args(publish_args("--config", str(toml)))
