"""Shared foundation of every qnf process: identities, envelope, bus, state, config."""
