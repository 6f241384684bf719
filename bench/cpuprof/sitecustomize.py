"""CPU-time sampling for `python -m bench.profile` (put on PYTHONPATH by it, nowhere else).

In a process whose command line holds TETHER_CPUPROF_MATCH, ITIMER_PROF raises SIGPROF after
every few ms of the process's CPU time (user + system; not wall time) and the handler counts
the Python stack it interrupted. Every 2 s a plain thread writes the counts, as collapsed
stacks, to TETHER_CPUPROF_OUT (`{pid}` in it is replaced by the process id: one file per hub
process of a cluster). For `serve` it arms in the forked gunicorn worker (timers do not
survive a fork), not in the master.
"""

from __future__ import annotations

import os
import sys

_MATCH = os.environ.get("TETHER_CPUPROF_MATCH")


def _install(out: str, fork: bool) -> None:
    import _thread
    import collections
    import signal
    import time

    counts: collections.Counter[str] = collections.Counter()
    stdlib = os.path.dirname(os.__file__)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    real_sleep = time.sleep  # captured before gevent patches time

    def frame_name(code: object) -> str:
        path = getattr(code, "co_filename", "?")
        for marker in ("site-packages/", f"{stdlib}/", f"{root}/"):  # shorter, same info
            path = path.split(marker)[-1]
        return f"{getattr(code, 'co_name', '?')} ({path}:{getattr(code, 'co_firstlineno', 0)})"

    def sample(signum: int, frame: object) -> None:
        stack = []
        while frame is not None:
            stack.append(frame_name(frame.f_code))  # type: ignore[attr-defined]
            frame = frame.f_back  # type: ignore[attr-defined]
        counts[";".join(reversed(stack))] += 1

    def dump_forever() -> None:
        path = out.replace("{pid}", str(os.getpid()))  # one file per process, if asked
        while True:
            real_sleep(2)
            snapshot = dict(counts)
            with open(path + ".tmp", "w") as f:
                f.writelines(f"{stack} {n}\n" for stack, n in snapshot.items())
            os.replace(path + ".tmp", path)

    def arm() -> None:
        counts.clear()
        signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
        _thread.start_new_thread(dump_forever, ())

    if fork:
        os.register_at_fork(after_in_child=arm)
    else:
        arm()


if _MATCH and _MATCH in sys.argv:
    _install(os.environ["TETHER_CPUPROF_OUT"], fork=_MATCH == "serve")
