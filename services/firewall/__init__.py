"""qnf firewall: policies compiled to nftables (DESIGN §5)."""
