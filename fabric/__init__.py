"""The fabric on one node: preparing it, supervising its processes, the `qnf` command."""
