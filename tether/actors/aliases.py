"""An alias's infer on its way along the alias's targets (docs/protocol.md, Aliases): plain
functions the Llm actors and the ActorSystem call, no state of their own.

The choice and the dispatch are one step at each target's owner: the infer carries the
targets still to ask (m.AliasRoute). The first target that can serve now takes it (`taken`);
one that cannot passes it on to the next (`pass_on`), after starting its wake if it sleeps,
so the request never waits for a wake while another target can answer. No actor asks
another: each tells the next target's actor, wherever that is (`Forward`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tether import errors
from tether.actors import messages as m

# Tell the actor of Llm `name` this infer; False when no actor serves that name (unknown,
# or its actor is down): the infer goes on to the next target.
Forward = Callable[[str, m.Infer], bool]


def nowhere(_name: str, _infer: m.Infer) -> bool:
    """A Forward that finds no actor (an actor started without one: tests)."""
    return False


def taken(msg: m.Infer, here: str) -> m.Infer:
    """The infer as target `here` serves it (a direct infer as it is). An alias's: its
    client learns who serves it (the answer names it; a withdrawal goes there), the task
    names the target, and from here on it is a direct request to `here`."""
    if msg.alias is None:
        return msg
    msg.reply.put(m.Routed(here))
    request = msg.request
    if "model" in request:
        request = {**request, "model": here}
    return dataclasses.replace(msg, request=request, alias=None)


def pass_on(msg: m.Infer, here: str | None, wakes: bool, forward: Forward) -> bool:
    """Target `here` cannot serve the alias's infer now (None: nobody has looked at it yet);
    `wakes`: it is being woken. On to the next target that has an actor; when none is left,
    to the first target that wakes, where it waits as a direct request (unless this is a
    failover, which never waits for a wake), else 503 `publisher_offline`. False when that
    first waking target is `here` itself: the caller keeps the request."""
    route = msg.alias
    assert route is not None, "only an alias's infer is passed on"
    waiting = route.waiting
    if waiting is None and wakes and not route.failover:
        waiting = here
    rest = route.rest
    while rest:
        target, rest = rest[0], rest[1:]
        onward = dataclasses.replace(route, rest=rest, waiting=waiting)
        if forward(target, dataclasses.replace(msg, alias=onward)):
            return True
    if waiting is not None and waiting == here:
        return False
    if waiting is not None:
        last = dataclasses.replace(route, rest=(), waiting=waiting, wait=True)
        if forward(waiting, dataclasses.replace(msg, alias=last)):
            return True
    msg.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=route.alias)))
    return True
