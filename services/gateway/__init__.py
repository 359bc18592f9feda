"""qnf gateway: REST and gRPC in front of the bus (DESIGN §6)."""
