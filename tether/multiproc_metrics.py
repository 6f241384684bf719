"""/metrics for the whole host when `tether serve` runs several workers (prometheus_client's
multiprocess mode; PROTOCOL.md, Several hub processes).

A scrape reaches one worker, so each worker's metrics live in files that every worker can
read: `tether serve` makes a temporary directory for them, names it in
PROMETHEUS_MULTIPROC_DIR before any worker starts (prometheus_client picks its storage when
it is first imported), and removes it when the hub exits. Counters and histograms add up
across workers. The gauges read from the board (tether_in_flight, tether_queued, ...) are
per process: each worker copies its own into file-backed gauges every REFRESH_S, and a
scrape shows their sum over the live workers ("livesum"). Process-level collectors
(CPU, memory, GC) are per process and have no host-wide meaning: they are left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "tether-metrics-"  # then the pid of the `tether serve` that made it
REFRESH_S = 1.0


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def directory(workers: int) -> Iterator[None]:
    """For the life of `tether serve`: a fresh metrics directory when there are several
    workers (an operator's own PROMETHEUS_MULTIPROC_DIR is used as it is, and kept)."""
    if workers <= 1 or enabled():
        yield
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory "
                           "was set: the workers would each count on their own")
    _remove_stale()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = path
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale() -> None:
    """The directories of hubs that were killed (SIGKILL skips the cleanup): their pid is
    gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def exposition() -> bytes:
    """Every worker's metrics, merged."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: a dead worker's gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class BoardGauges:
    """This worker's board gauges, copied into file-backed gauges."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector  # tether.metrics' board collector
        self._gauges: dict[str, Any] = {}
        self._set: dict[str, set[tuple[str, ...]]] = {}  # gauge -> label values set last time

    def refresh(self) -> None:
        from prometheus_client import Gauge

        for family in self._collector.collect():
            labelnames = list(getattr(family, "_labelnames", ()))
            gauge = self._gauges.get(family.name)
            if gauge is None:
                gauge = self._gauges[family.name] = Gauge(
                    family.name, family.documentation, labelnames, registry=None,
                    multiprocess_mode="livesum")
                self._set[family.name] = set()
            now: set[tuple[str, ...]] = set()
            for sample in family.samples:
                values = tuple(sample.labels[n] for n in labelnames)
                (gauge.labels(*values) if labelnames else gauge).set(sample.value)
                now.add(values)
            for gone in self._set[family.name] - now:  # files keep series: zero, not remove
                gauge.labels(*gone).set(0)
            self._set[family.name] = now


def mirror_board(collector: Any) -> None:
    """In a worker: keep its board gauges in the shared files, every REFRESH_S."""
    from tether.runtime import spawn

    gauges = BoardGauges(collector)

    def loop() -> None:
        while True:
            try:
                gauges.refresh()
            except Exception:  # noqa: BLE001 - a metric must not kill its refresher
                import logging

                logging.getLogger("tether.metrics").exception("board gauges: refresh failed")
            time.sleep(REFRESH_S)

    spawn(loop)
