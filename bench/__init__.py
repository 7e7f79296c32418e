"""Benchmarks that print figures (not tests): run each as `python -m bench.NAME` from the top."""
