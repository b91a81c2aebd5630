"""Benchmarks: measurements anyone can rerun; not tests (no timing assertions in the suite)."""
