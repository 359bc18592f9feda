"""dns's I/O shell: UDP/TCP listeners on the gateways, and the upstream forwarder."""
