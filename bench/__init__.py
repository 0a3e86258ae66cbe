"""Benchmarks, run from the repository root as modules: python -m bench.throughput, python -m bench.detection."""
