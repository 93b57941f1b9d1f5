"""Performance benchmarks: ``python -m benchmarks.perf`` (see README.md here)."""
