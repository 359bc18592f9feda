"""qnf vnet: virtual networks, IPAM, bridges and veths (DESIGN §5)."""
