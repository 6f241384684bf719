"""What /proc says about a hub's processes: its gunicorn workers, and which worker holds a
given TCP connection (the kernel hands each new connection to one of them)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the established IPv4 socket from `local_port` to `remote_port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if (state == "01" and int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == remote_port):
            return inode
    return None


def holder(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of `pids` holds the server side of the connection from `client_port`."""
    inode = _inode(server_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):  # the process ended meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                        return pid
    return None


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
               "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
               "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def tcp_states(pid: int, remote_port: int) -> list[str]:
    """The states of the TCP connections `pid` holds to `remote_port` ("ESTABLISHED",
    "CLOSE_WAIT": the peer closed it, `pid` has not yet), in no particular order."""
    held: set[str] = set()
    with contextlib.suppress(OSError):  # the process ended meanwhile
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    held.add(target[8:-1])
    states: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if inode in held and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    states.append(_TCP_STATES.get(state, state))
    return states
