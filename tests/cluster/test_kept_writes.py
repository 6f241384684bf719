"""A status write kept through a database outage is older than any registration after it
(tether/store/write_behind.py): the registration drops it, or once the database answers
the kept write would undo what the publisher just registered. The same on one process and
in a cluster (ClusterSupervisor registers through the base class's adoption of the rows).

Both systems run in-process on real databases; the outage is the kept write's own (it
fails as a database that does not answer does), so the registration itself goes through.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import peewee
import pytest

from tests.support import postgres, redisdb
from tests.support.actors import provider
from tests.support.hub import wait_until
from tether.actors.system import ActorSystem
from tether.cluster.system import ClusterSystem
from tether.config import Settings
from tether.store import llms as store
from tether.store.write_behind import WRITES

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["one process", "cluster"])
def system(request: pytest.FixtureRequest, tmp_path) -> Iterator[ActorSystem]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'unit.db'}", publisher_grace_s=0)
    if request.param == "one process":
        built: ActorSystem = ActorSystem(settings).start()
        yield built
        built.stop()
        return
    db, bus = postgres.create(), redisdb.create()
    try:
        built = ClusterSystem(dataclasses.replace(
            settings, database_url=db.url, bus_url=bus.url)).start()
        yield built
        built.stop()
    finally:
        bus.release()
        db.drop()


def test_a_registration_drops_a_status_write_kept_from_before(system: ActorSystem) -> None:
    system.register("s1", [provider("a")])
    answers = threading.Event()  # the database, for the kept write: silent until set

    def kept() -> None:  # the member's status as an outage kept it: hibernating
        if not answers.is_set():
            raise peewee.OperationalError("the database does not answer")
        store.set_status("a", "s1", "hibernating")

    WRITES.write(("a", "s1", "status"), kept, now=False)
    assert WRITES.waiting(("a", "s1", "status"))

    system.register("s1", [provider("a")])  # newer: the member is active
    answers.set()
    wait_until(lambda: len(WRITES) == 0, timeout=10)  # the kept write, had it stayed
    members = store.members_of(["a"])["a"]
    assert [(m.session_id, m.status) for m in members] == [("s1", "active")]
