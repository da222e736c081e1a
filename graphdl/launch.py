"""Launching data-parallel jobs: find ``mpiexec`` and run a Python module on K ranks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Sequence


def find_mpiexec() -> str:
    """The ``mpiexec`` of the installed MPI (the mpich wheel puts it next to Python's
    scripts), else the one on PATH; raises naming the fix when there is none."""
    candidates = [os.path.join(sysconfig.get_path("scripts"), "mpiexec"),
                  os.path.join(os.path.dirname(sys.executable), "mpiexec"),
                  os.path.join(sys.base_prefix, "bin", "mpiexec")]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("mpiexec")
    if found:
        return found
    raise FileNotFoundError("mpiexec not found: install MPI with pip install 'graphdl[mpi]' "
                            "(mpi4py and the mpich wheel, which brings mpiexec)")


def mpiexec_command(ranks: int, args: Sequence[str]) -> list[str]:
    """``mpiexec -n ranks <this python> args...`` (the same interpreter on every rank)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return [find_mpiexec(), "-n", str(int(ranks)), sys.executable, *args]


def run_ranks(ranks: int, args: Sequence[str], timeout: float | None = None) -> int:
    """Run ``python args...`` on ``ranks`` MPI ranks; returns mpiexec's exit status."""
    return subprocess.run(mpiexec_command(ranks, args), timeout=timeout).returncode
