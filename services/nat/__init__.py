"""qnf nat: egress masquerade and port publishing (DESIGN §5)."""
