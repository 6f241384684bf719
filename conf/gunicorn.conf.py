import os

# gunicorn settings for `tether serve`. bind, workers and worker_class are set by tether
# itself from its settings (`workers`, default 1: see the README, Running several hubs).
worker_connections = 20000   # every publisher stream and waiting client is one connection
timeout = 30                 # the worker's own liveness heartbeat to the arbiter
# SIGTERM: the drain lets tasks under way finish for graceful_timeout - 2 s, then answers the
# rest 503; TETHER_GRACEFUL_TIMEOUT_S overrides it (tests use a short one).
graceful_timeout = int(os.environ.get("TETHER_GRACEFUL_TIMEOUT_S", "15"))
keepalive = 5                # idle keep-alive: long enough for busy result POSTs, short
                             # enough that idle connections do not hold up SIGTERM
accesslog = None             # one log line per task comes from the hub itself
errorlog = "-"
