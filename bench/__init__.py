"""Benchmarks: flowsignals against the raw-driver floor, measured in the same run."""
