"""Benchmark harnesses (entry points in jobs/): what a figure was measured on, and how."""
