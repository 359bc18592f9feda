"""Docker network driver plugin (libnetwork remote driver) onto the fabric's node commands."""
