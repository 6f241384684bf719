"""What the hub and the publisher share: the actor base, the event loop's timers, names,
settings schemas, logging, SSE, the wire client. It imports nothing of tether above it."""
