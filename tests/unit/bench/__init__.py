"""Tests of bench/: the benchmarks still run."""
