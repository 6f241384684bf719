"""Programs beside the hub and the publisher: the demo, its backend, `tether status`."""
