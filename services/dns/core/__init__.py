"""dns's pure core: the record store, and the wire-format answer cache built from it."""
