"""`tether serve`: gunicorn, started programmatically, `workers` gevent workers (the one in
tether.http.worker)."""

from __future__ import annotations

import runpy
import signal
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from tether.common import logs
from tether.common.orphans import die_with_parent
from tether.config import REPO_ROOT, Settings
from tether.http import python_gc
from tether.observability import multiproc_metrics

GUNICORN_CONF = Path("conf/gunicorn.conf.py")


def _conf_file() -> Path | None:
    for candidate in (GUNICORN_CONF, REPO_ROOT / GUNICORN_CONF):
        if candidate.exists():
            return candidate
    return None


def _post_worker_init(worker: Any) -> None:
    """SIGTERM drains before gunicorn's own shutdown (docs/protocol.md, Lifecycle).

    gunicorn closes the listener as soon as its worker stops being `alive`: a publisher's
    result POST for a task under way would then be refused and its client answered 503
    although the answer was on its way. So the listener stays open while the drain runs:
    new infers get 503 shutting_down, results and chunks for tasks under way are taken until
    those tasks end or graceful_timeout - 2 s passes (then their clients get 503), and each
    publisher stream ends with `retry:` once its session has nothing left. Only then does
    gunicorn stop accepting and wait for the last responses to be written.
    """
    import gevent

    system = worker.app.system
    original = worker.handle_exit
    deadline = max(worker.cfg.graceful_timeout - 2.0, 0.0)
    draining: list[bool] = []

    def drain_then_exit(sig: int, frame: Any) -> None:
        try:
            system.drain(deadline)
            if not system.wait_drained(deadline + 0.5):
                worker.log.warning("drain: some sessions did not end in time")
        finally:
            original(sig, frame)  # worker.alive = False: gunicorn's graceful shutdown

    def handle_exit(sig: int, frame: Any) -> None:
        if not draining:  # a second SIGTERM changes nothing; SIGQUIT/SIGINT stop at once
            draining.append(True)
            gevent.get_hub().loop.run_callback(gevent.spawn, drain_then_exit, sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)
    # Last: what booting made is frozen as the collector's baseline.
    policy = python_gc.install(worker.app.settings.python_gc)
    worker.log.info("python_gc: %s", "CPython's default schedule" if policy is None else
                    f"freeze ({policy.frozen} objects from booting frozen)")


def _post_fork(server: Any, worker: Any) -> None:
    """A worker dies with its master. gunicorn's own check notices a dead master only after
    a while and then drains; meanwhile the orphan keeps the listening socket and the
    sessions of a hub that was killed, and a hub restarted on that port would share its
    clients with it (a kill -9 of the master must stop the hub, as it does its workers)."""
    die_with_parent(signal.SIGKILL, parent=server.pid)


def _worker_exit(server: Any, worker: Any) -> None:
    system = getattr(worker.app, "system", None)
    if system is not None:
        system.stop()


def _child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker is gone (it may have been killed): its gauges stop."""
    multiproc_metrics.worker_exited(worker.pid)


class HubApplication(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.system: Any = None  # the worker's ActorSystem, once load() ran
        super().__init__()

    def load_config(self) -> None:
        path = _conf_file()
        if path is not None:
            for key, value in runpy.run_path(str(path)).items():
                if key == "workers":
                    # One place decides it: the setting, checked by `tether serve` against
                    # what several processes need (database_url, bus_url).
                    raise SystemExit(f"tether serve: {path} sets workers; set Tether's "
                                     "`workers` setting instead (--workers, TETHER_WORKERS)")
                if key == "keepalive":  # one place decides it too: the setting
                    raise SystemExit(f"tether serve: {path} sets keepalive; set Tether's "
                                     "`http_keepalive_s` setting instead "
                                     "(TETHER_HTTP_KEEPALIVE_S)")
                if key in self.cfg.settings:
                    self.cfg.set(key, value)
        self.cfg.set("bind", [f"{self.settings.host}:{self.settings.port}"])
        self.cfg.set("workers", self.settings.workers)
        self.cfg.set("keepalive", self.settings.http_keepalive_s)
        self.cfg.set("worker_class", "tether.http.worker.Worker")  # gevent, fewer sends
        self.cfg.set("loglevel", self.settings.log_level)
        if self.settings.log_format == "json":  # gunicorn's own lines are JSON too
            self.cfg.set("logconfig_dict", logs.gunicorn_logconfig(self.settings.log_level))
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25.1 opens a control socket in $HOME: several hubs would collide
            # on it, and it could change the worker count behind the settings' back.
            self.cfg.set("control_socket_disable", True)
        self.cfg.set("post_fork", _post_fork)
        self.cfg.set("post_worker_init", _post_worker_init)
        self.cfg.set("worker_exit", _worker_exit)
        if multiproc_metrics.enabled():
            self.cfg.set("child_exit", _child_exit)

    def load(self) -> Any:
        from tether.http.app import build  # imported in the worker, after monkey-patching

        app, self.system = build(self.settings)
        if multiproc_metrics.enabled():
            from tether.observability import metrics

            multiproc_metrics.mirror_board(metrics.BOARD_GAUGES)
        return app


def serve(settings: Settings) -> None:
    HubApplication(settings).run()
