"""Benchmark support: what a figure was measured against and on, so later figures compare with it."""
