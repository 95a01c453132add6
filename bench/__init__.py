"""Benchmarks: `python -m bench` runs the harness (see bench/README.md)."""
