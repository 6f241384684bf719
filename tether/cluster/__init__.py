"""Several hub processes over one PostgreSQL and one Redis (docs/protocol.md, Several hub
processes; docs/architecture.md). This package builds on tether.actors, never the reverse.

- system.py: ClusterSystem, the ActorSystem of one process among several (and what the
  other processes ask of this one); supervisor.py: ClusterSupervisor, its supervisor.
- bus.py: this process's Redis connection, its channel and liveness key, the reader.
- codec.py: messages as JSON (an allow-list of dataclasses), never pickle; addresses.py:
  what live refs and reply channels are on the bus, and become when they arrive.
- leases.py: who owns each Llm name, which process is each session's home; owners.py:
  this process's owner lookups.
- proxies.py: remote actor refs and reply channels, which `tell`/`put` over the bus.
- router.py: local or remote, per message; what arrives on this process's channel; the
  liveness monitor (dead processes, their homes); take-overs' tasks on to the new home.
- pending.py: requests of this process waiting on another (acknowledgements, lost
  messages, requests waiting on a process that died).
- shared_board.py: the whole cluster in reads and /status.

Without `bus_url` none of this is loaded: one process, everything in memory, as before.
"""
