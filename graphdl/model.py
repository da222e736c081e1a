"""Placeholder; filled in by its owner."""
Model = Sequential = None
