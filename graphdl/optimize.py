"""Placeholder; filled in by its owner."""
optimize = None
