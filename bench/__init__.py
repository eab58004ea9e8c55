"""Benchmarks: `make bench` (bench/README.md). Never run by the test suite."""
