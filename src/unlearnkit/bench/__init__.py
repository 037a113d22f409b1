"""Benchmark suites: the oracle and every method on one protocol, over seeds."""
