"""Benchmarks of megane-crawler; each module runs with `python -m bench.<name>`."""
