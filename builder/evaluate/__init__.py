"""Offline evaluation: protocols (splits), metrics and baselines (DESIGN.md §8)."""
