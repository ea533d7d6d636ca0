"""The benchmark: run with ``python -m bench.run`` from the repository root (bench/README.md)."""
