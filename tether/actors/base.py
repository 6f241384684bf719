"""What the hub's actors share beyond tether.actor: the link to their supervisor."""

from __future__ import annotations

import pykka


class Parent:
    """How a child reaches its supervisor. The ActorSystem points it at a restarted
    supervisor, so children started by the crashed one keep reporting to the live one."""

    __slots__ = ("ref",)

    def __init__(self, ref: pykka.ActorRef | None = None) -> None:
        self.ref = ref
