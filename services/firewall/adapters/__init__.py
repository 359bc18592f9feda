"""firewall's I/O shell: libnftables and the KV stores."""
