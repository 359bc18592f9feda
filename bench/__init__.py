"""Benchmarks of the fabric; run each as `python -m bench.<name>` (not part of the installed package)."""
