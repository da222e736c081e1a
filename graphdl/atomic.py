"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace``.

A crash or an error mid-write never leaves a half-written file at the target path. Temporary
files are created with mode 0o666 so the umask decides the final permissions, as it would for
any new file (``tempfile.mkstemp`` would make them owner-only).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator


def temp_path_for(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A new, exclusively created, empty temporary file beside ``path``."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it goes.

    ``suffix`` lets writers that pick a format from the name (matplotlib, numpy) see the
    right extension.
    """
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, **kwargs: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, **kwargs) + "\n")
