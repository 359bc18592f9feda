"""vnet's I/O shell: netlink (pyroute2) and the KV stores."""
