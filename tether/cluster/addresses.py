"""Addresses on the bus, and the codec's hooks (tether.cluster.codec): a live actor ref or
reply channel of a message leaves this process as an address, and an address that arrives
becomes something to `tell` or `put` on here.

- an actor: ("session", home, session_id) or ("llm", owner, name). A local child is named
  by the supervisor when it starts it; a session's proxy keeps its home's address; an
  LlmActor's address is read as its name alone (its owner is looked up when it is told).
- a reply channel: ("reply", process, request_id), the process holding the client's
  connection (the request's id: PendingRequests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from tether.actors import messages as m
from tether.actors.directory import Directory
from tether.cluster import codec
from tether.cluster.pending import PendingRequests
from tether.cluster.proxies import RemoteLlm, RemoteReply, RemoteSession, Sender


class Addresses:
    """`directory()` is this process's live directory of actors."""

    def __init__(self, process: str, sender: Sender, requests: PendingRequests,
                 directory: Callable[[], Directory]) -> None:
        self._process = process
        self._sender = sender
        self._requests = requests
        self._directory = directory
        self._local: dict[str, codec.Address] = {}  # local actor urn -> address
        self.hooks = codec.Hooks(self.ref_address, self.reply_address, self.ref, self.reply)

    def name_local(self, ref: pykka.ActorRef, kind: str, key: str) -> None:
        """The supervisor names each child it starts, so messages can carry it."""
        self._local[ref.actor_urn] = (kind, self._process, key)

    def forget_local(self, ref: pykka.ActorRef) -> None:
        self._local.pop(ref.actor_urn, None)

    def ref_address(self, ref: Any) -> codec.Address:
        if isinstance(ref, RemoteSession):
            return ref.address
        if isinstance(ref, RemoteLlm):
            return ("llm", "", ref.name)
        address = self._local.get(ref.actor_urn)
        if address is None:
            raise codec.CodecError(f"{ref} has no address on the bus")
        return address

    def ref(self, address: codec.Address) -> Any:
        kind, process, key = address
        directory = self._directory()
        if kind == "session":
            if process == self._process:
                entry = directory.session(key)
                return entry.ref if entry is not None else None
            return RemoteSession(self._sender, process, key)
        if kind == "llm":
            return directory.llm(key) or RemoteLlm(self._sender, key)
        raise codec.CodecError(f"unknown actor kind {kind!r}")

    def reply_address(self, reply: m.ReplyChannel) -> codec.Address:
        if isinstance(reply, RemoteReply):
            return ("reply", reply.process, reply.request_id)
        return ("reply", self._process, self._requests.request_id(reply))

    def reply(self, address: codec.Address) -> m.ReplyChannel:
        _, process, request_id = address
        if process != self._process:
            return RemoteReply(self._sender, process, request_id)
        return self._requests.channel(request_id)
