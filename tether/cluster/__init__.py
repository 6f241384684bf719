"""Several hub processes over one PostgreSQL and one Redis (docs/protocol.md, Several hub
processes; docs/architecture.md).

- bus.py: this process's Redis connection, its channel and liveness key, the reader.
- codec.py: messages as JSON (an allow-list of dataclasses), never pickle.
- leases.py: who owns each Llm name, which process is each session's home.
- proxies.py: remote actor refs and reply channels, which `tell`/`put` over the bus.
- router.py: local or remote, per message; what arrives on this process's channel; the
  liveness monitor (dead processes, their homes, requests waiting on them).

Without `bus_url` none of this is loaded: one process, everything in memory, as before.
"""
