"""The hub's observation of itself: the board of live state, Prometheus metrics."""
