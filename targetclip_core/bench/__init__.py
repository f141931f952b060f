"""Benchmarks, and the baselines they are timed against in the same run."""
