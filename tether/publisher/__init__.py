"""`tether publish`: the agent that runs next to a real backend and serves the hub's tasks."""
