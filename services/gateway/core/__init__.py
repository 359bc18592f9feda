"""The gateway's pure core: operations, roles, tokens, status mapping, pagination, rate limits.

No I/O here; the REST (and gRPC) transports and the bus adapter build on it.
"""
