"""The ``graphdl`` command line (placeholder; filled in by its owner)."""


def main(argv=None) -> int:
    """Entry point."""
    print("graphdl: not built yet")
    return 1
