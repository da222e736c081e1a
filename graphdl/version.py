"""The installed graphdl's version, read from the package metadata (pyproject.toml holds the
one number)."""
from __future__ import annotations

from importlib import metadata


def installed_version() -> str:
    """The version of the installed ``graphdl`` distribution."""
    try:
        return metadata.version("graphdl")
    except metadata.PackageNotFoundError:  # the source tree on sys.path, never installed
        return "0+unknown"


__version__ = installed_version()
