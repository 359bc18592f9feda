"""qnf dns: names of endpoints and services, a resolver per network (DESIGN §5)."""
