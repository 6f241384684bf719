"""A result posted for a task whose home process died (issue 22; the chaos run's dead
`solo`): the process it lands on answers 404 `task_not_found` once the home's liveness key
is gone, so the publisher stops posting it and frees its slot. A 503 `hub_busy` for ever
would have `tether publish` retry it until the task's 600 s deadline, with the slot held:
a single publisher of two slots, holding two such results, served nothing any more."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.test_liveness import kill_9
from tests.cluster.test_reconciliation import CLIENT_TIMEOUT_S, ONE_SLOT
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)

LIVENESS_TTL_S = 5.0
SLACK_S = 4.0


def test_a_result_for_a_task_of_a_dead_home_is_refused_for_good(
        cluster: Callable[..., Hub]) -> None:
    a = cluster(liveness_ttl_s=LIVENESS_TTL_S)
    b = cluster(liveness_ttl_s=LIVENESS_TTL_S)
    pub = TestPublisher(a.url)
    pub.register(ONE_SLOT)
    stream = pub.open()  # the session is homed on a: its tasks' ids name a
    call = in_background(lambda: b.infer("m1", "lost", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    kill_9(a)
    killed = time.monotonic()
    pub.url = b.url  # the publisher moved on, its backend's answer in hand
    answers: list[int] = []

    def refused() -> bool:
        status = pub.result(task["taskId"], {"status": 200, "body": "lost"}).status_code
        answers.append(status)
        return status == 404

    wait_until(refused, timeout=LIVENESS_TTL_S + 2 + SLACK_S, interval=0.25)
    assert set(answers) <= {503, 404}, answers  # a retry until the home is known dead
    assert time.monotonic() - killed < LIVENESS_TTL_S + 2 + SLACK_S
    # Its client, on b, was answered too: the task died with its home.
    answer = result_of(call, timeout=LIVENESS_TTL_S + 2 + SLACK_S)
    assert answer.status_code == 503, answer.text
