"""Benchmarks (`ntm bench ...`), run in the lab."""
