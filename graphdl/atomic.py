"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace``.

A crash or an error mid-write never leaves a half-written file at the target path. Temporary
files carry a recognisable name, ``.<target>.graphdl.atomic.<pid>.<random><suffix>``; a later
write to the same target removes the ones left behind by processes that died mid-write
(the pid is checked, so a write in progress elsewhere is never touched). Temporary files are
created with mode 0o666 so the umask decides the final permissions, as it would for any new
file (``tempfile.mkstemp`` would make them owner-only).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from typing import Any, Iterator

TEMP_MARK = "graphdl.atomic"


def temp_path_for(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A new, exclusively created, empty temporary file beside ``path`` (stale temporary
    files of dead writers to the same target are removed first)."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    remove_stale_temps(path)
    while True:
        tmp = os.path.join(folder, f".{base}.{TEMP_MARK}.{os.getpid()}."
                                   f"{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove temporary files for ``path`` whose writing process is gone; returns them."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    pattern = re.compile(rf"\.{re.escape(base)}\.{re.escape(TEMP_MARK)}\.(\d+)\.[0-9a-f]+\.")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: leave it alone
    return True


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk (before a rename makes it visible)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it goes.

    ``suffix`` lets writers that pick a format from the name (matplotlib, numpy) see the
    right extension.
    """
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        fsync_file(tmp)  # the data is on disk before the rename makes it visible
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
