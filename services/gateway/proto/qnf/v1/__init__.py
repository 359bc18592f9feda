"""Package qnf.v1: fabric.proto and the stubs scripts/gen-proto generates from it (committed)."""
