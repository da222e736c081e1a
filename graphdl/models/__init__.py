"""Model zoo; filled in by its owner."""
