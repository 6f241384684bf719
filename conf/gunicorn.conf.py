import os

# gunicorn settings for `tether serve`. bind, workers, keepalive and worker_class are set by
# tether itself from its settings (`workers`, default 1: see the README, Running several
# hubs; `http_keepalive_s`, default 5: how long an idle keep-alive connection stays open).
worker_connections = 20000   # every publisher stream and waiting client is one connection
timeout = 30                 # the worker's own liveness heartbeat to the arbiter
# SIGTERM: the drain lets tasks under way finish for graceful_timeout - 2 s, then answers the
# rest 503; TETHER_GRACEFUL_TIMEOUT_S overrides it (tests use a short one).
graceful_timeout = int(os.environ.get("TETHER_GRACEFUL_TIMEOUT_S", "15"))
accesslog = None             # one log line per task comes from the hub itself
errorlog = "-"
