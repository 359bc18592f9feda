"""Generated gRPC stubs of the gateway API live below; see scripts/gen-proto."""
