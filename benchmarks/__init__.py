"""Benchmark drivers (run as scripts: ``python benchmarks/<name>.py``) and their shared helpers."""
