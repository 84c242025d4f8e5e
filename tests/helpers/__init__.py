"""Helpers shared by several test modules (fakes, small datasets, reference implementations)."""
