# gunicorn settings for `tether serve`. bind, workers and worker_class are set by tether
# itself from its settings (one gevent worker: publisher sessions live in one process).
worker_connections = 20000   # every publisher stream and waiting client is one connection
timeout = 30                 # the worker's own liveness heartbeat to the arbiter
graceful_timeout = 15        # SIGTERM: time for in-flight requests to finish
keepalive = 5                # idle keep-alive: long enough for busy result POSTs, short
                             # enough that idle connections do not hold up SIGTERM
accesslog = None             # one log line per task comes from the hub itself
errorlog = "-"
