"""Communicators for the collective ops: MPI through mpi4py's buffer interface, or one process.

A :class:`Communicator` wraps an mpi4py communicator (``COMM_WORLD`` by default). Every
collective is a nonblocking MPI call on contiguous NumPy buffers (no pickling), completed by
a watchdog that polls it against a deadline: when a peer has died, hangs or took another code
path, the waiting rank prints what it was waiting for and aborts the whole job
(``MPI_Abort``), so ``mpiexec`` ends with a clear message instead of hanging. MPI errors are
returned as exceptions (``ERRORS_RETURN``) and turned into the same abort.

:class:`LocalCommunicator` is the single-process communicator (size 1, rank 0): every
collective is a copy. The registry's op tests run the collectives through it in-process.

Overlap (XLA's all-reduce-start/-done): :meth:`~LocalCommunicator.allreduce_start` starts an
in-place nonblocking all-reduce of a buffer and returns; :meth:`~LocalCommunicator.allreduce_done`
waits for it under the watchdog. In between, the executor calls :meth:`~LocalCommunicator.poll`
after every kernel (MPI libraries without a progress thread, MPICH's default, advance a
nonblocking collective only inside MPI calls), and :meth:`~LocalCommunicator.drain` when a
step fails, so no request outlives the step that started it.

Each communicator counts its collectives, bytes and seconds in :attr:`stats` (for reports
and benchmarks; with overlap, the seconds are the exposed ones: starting, polling, waiting).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_TIMEOUT_S = 300.0
_SPIN_POLLS = 2000  # busy polls before the watchdog starts sleeping between polls
_SLEEP_S = 2e-4


@dataclass
class CommStats:
    """What a communicator did: collective calls, payload bytes, seconds spent in them."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        """Zero every counter."""
        self.calls, self.bytes, self.seconds = 0, 0, 0.0


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the communicator's timeout."""


class LocalCommunicator:
    """The single-process communicator: size 1, rank 0; every collective copies its input."""

    def __init__(self):
        self.rank, self.size = 0, 1
        self.timeout = DEFAULT_TIMEOUT_S
        self.stats = CommStats()
        # started all-reduces not yet done: buffer address -> (request or None, buffer)
        self._pending: dict[int, tuple] = {}

    def __repr__(self) -> str:
        return "LocalCommunicator()"

    def allreduce(self, x: np.ndarray, out: np.ndarray | None, op: str = "sum") -> np.ndarray:
        """Sum or mean over the ranks (here: a copy)."""
        return _copy(x, out)

    def allreduce_start(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """Start a sum all-reduce of ``x`` in ``out`` (a copy of ``x`` unless it is ``x``'s
        own storage) and return the buffer; :meth:`allreduce_done` completes it."""
        buf = _inplace_target(x, out)
        self._track(buf, self._start(buf))
        return buf

    def allreduce_done(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Wait for the all-reduce started on ``buf``; divide by the rank count for a mean."""
        entry = self._pending.pop(buf.ctypes.data, None)
        if self.size > 1 and (entry is None or entry[1].nbytes != buf.nbytes):
            raise RuntimeError(f"AllReduceDone on a buffer of {buf.dtype}{list(buf.shape)} "
                               "that no AllReduceStart started (or it was completed already)")
        if entry is not None and entry[0] is not None:
            t0 = time.perf_counter()
            self._wait("AllReduce (overlapped)", buf, entry[0])
            self.stats.seconds += time.perf_counter() - t0
        if op == "mean" and self.size > 1:
            buf /= buf.dtype.type(self.size)
        return buf

    @property
    def pending(self) -> int:
        """How many started all-reduces are not done yet."""
        return len(self._pending)

    def poll(self) -> None:
        """Let started all-reduces progress (MPI advances them only inside MPI calls)."""

    def drain(self) -> None:
        """Complete every started all-reduce (a step failed between start and done): the
        buffers are free to reuse afterwards and no request leaks."""
        while self._pending:
            _, (request, buf) = self._pending.popitem()
            if request is not None:
                self._wait("AllReduce (drained)", buf, request)

    def _start(self, buf: np.ndarray):
        """The request of an in-place all-reduce of ``buf`` (None: complete already, as in one
        process)."""
        self.stats.calls += 1
        self.stats.bytes += buf.nbytes
        return None

    def _track(self, buf: np.ndarray, request) -> None:
        if request is None:  # one process: nothing outstanding
            return
        if buf.ctypes.data in self._pending:
            raise RuntimeError(f"AllReduceStart on a buffer of {buf.dtype}{list(buf.shape)} "
                               "that another started all-reduce still uses")
        self._pending[buf.ctypes.data] = (request, buf)

    def _wait(self, what: str, buf: np.ndarray, request) -> None:
        """Complete ``request`` (nothing to wait for in one process)."""

    def broadcast(self, x: np.ndarray, out: np.ndarray | None, root: int = 0) -> np.ndarray:
        """Rank ``root``'s value (here: a copy)."""
        _check_root(root, 1)
        return _copy(x, out)

    def reduce(self, x: np.ndarray, out: np.ndarray | None, root: int = 0) -> np.ndarray:
        """The sum on ``root``, zeros elsewhere (here: a copy)."""
        _check_root(root, 1)
        return _copy(x, out)

    def allgather(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The ranks' values concatenated on axis 0 (here: a copy)."""
        return _copy(x, out)

    def reduce_scatter(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """This rank's block of the sum (here: a copy)."""
        return _copy(x, out)

    def allreduce_host(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """All-reduce a small host array (metrics, flags) and return the result."""
        return np.array(values, copy=True)

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for)."""

    def abort(self, message: str, code: int = 1) -> None:
        """Raise: a single process has no job to abort."""
        raise RuntimeError(message)


class Communicator(LocalCommunicator):
    """An MPI communicator (``mpi4py``) for collectives in graphs.

    ``comm`` is an mpi4py communicator (``MPI.COMM_WORLD`` when None). ``timeout`` (seconds)
    bounds every collective: past it the rank aborts the job with a message naming the
    collective, its size and the rank.
    """

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__()
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    # ---- collectives on contiguous buffers ----------------------------------------------

    def allreduce(self, x, out, op="sum"):
        """Sum or mean over the ranks into ``out`` (or a new array)."""
        send = np.ascontiguousarray(x)
        recv = _target(out, send)
        if self.size == 1:
            np.copyto(recv, send)
        else:
            self._run("AllReduce", send, lambda: self.comm.Iallreduce(send, recv, self.MPI.SUM))
        if op == "mean" and self.size > 1:
            recv /= recv.dtype.type(self.size)
        return recv

    def broadcast(self, x, out, root=0):
        """Rank ``root``'s value into ``out`` on every rank."""
        _check_root(root, self.size)
        buf = _target(out, x)
        np.copyto(buf, x)
        if self.size > 1:
            self._run("Broadcast", buf, lambda: self.comm.Ibcast(buf, root))
        return buf

    def reduce(self, x, out, root=0):
        """The sum on ``root``; zeros on the other ranks."""
        _check_root(root, self.size)
        send = np.ascontiguousarray(x)
        recv = _target(out, send)
        if self.size == 1:
            np.copyto(recv, send)
            return recv
        self._run("Reduce", send, lambda: self.comm.Ireduce(send, recv, self.MPI.SUM, root))
        if self.rank != root:
            recv[...] = 0
        return recv

    def allgather(self, x, out):
        """The ranks' values concatenated on axis 0, on every rank."""
        send = np.ascontiguousarray(x)
        shape = (send.shape[0] * self.size,) + send.shape[1:]
        recv = out if out is not None and out.flags.c_contiguous else np.empty(shape, send.dtype)
        if self.size == 1:
            np.copyto(recv, send)
        else:
            self._run("AllGather", send, lambda: self.comm.Iallgather(send, recv))
        return recv

    def reduce_scatter(self, x, out):
        """Block ``rank`` (axis 0) of the sum over the ranks."""
        send = np.ascontiguousarray(x)
        shape = (send.shape[0] // self.size,) + send.shape[1:]
        recv = out if out is not None and out.flags.c_contiguous else np.empty(shape, send.dtype)
        if self.size == 1:
            np.copyto(recv, send)
        else:
            self._run("ReduceScatter", send,
                      lambda: self.comm.Ireduce_scatter_block(send, recv, self.MPI.SUM))
        return recv

    def allreduce_host(self, values, op="sum"):
        """All-reduce a small host array (``op``: "sum" or "max") and return the result."""
        send = np.ascontiguousarray(values)
        recv = np.empty_like(send)
        if self.size == 1:
            return send.copy()
        mpi_op = {"sum": self.MPI.SUM, "max": self.MPI.MAX}[op]
        self._run("AllReduce (host)", send, lambda: self.comm.Iallreduce(send, recv, mpi_op))
        return recv

    def barrier(self) -> None:
        """Wait for every rank (under the watchdog)."""
        if self.size > 1:
            self._run("Barrier", np.zeros(0), lambda: self.comm.Ibarrier())

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` (naming this rank) and abort every rank of the job."""
        sys.stdout.flush()
        sys.stderr.write(f"graphdl.distributed: rank {self.rank}/{self.size}: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    # ---- overlapped all-reduce -----------------------------------------------------------

    def _start(self, buf):
        if self.size == 1:
            return super()._start(buf)
        t0 = time.perf_counter()
        try:
            request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, self.MPI.SUM)
        except self.MPI.Exception as err:
            self._failed("AllReduce (overlapped)", buf, err)
            raise
        self.stats.calls += 1
        self.stats.bytes += buf.nbytes
        self.stats.seconds += time.perf_counter() - t0
        return request

    def poll(self) -> None:
        """One ``MPI_Testall`` over the started all-reduces (completed ones stay tracked
        until their done)."""
        if not self._pending:
            return
        t0 = time.perf_counter()
        requests = [r for r, _ in self._pending.values() if r is not None]
        if requests:
            try:
                self.MPI.Request.Testall(requests)
            except self.MPI.Exception as err:
                self._failed("AllReduce (overlapped)", next(iter(self._pending.values()))[1],
                             err)
                raise
        self.stats.seconds += time.perf_counter() - t0

    # ---- the watchdog -------------------------------------------------------------------

    def _run(self, what: str, buf: np.ndarray, start) -> None:
        """Start a nonblocking collective and poll it to completion against the deadline."""
        t0 = time.perf_counter()
        try:
            request = start()
        except self.MPI.Exception as err:
            self._failed(what, buf, err)
            raise
        self._wait(what, buf, request)
        self.stats.calls += 1
        self.stats.bytes += buf.nbytes
        self.stats.seconds += time.perf_counter() - t0

    def _wait(self, what: str, buf: np.ndarray, request) -> None:
        """Poll ``request`` to completion against the deadline; abort the job past it."""
        try:
            deadline = time.monotonic() + self.timeout
            polls = 0
            while not request.Test():
                polls += 1
                if polls > _SPIN_POLLS:
                    if time.monotonic() > deadline:
                        self._timed_out(what, buf)
                    time.sleep(_SLEEP_S)
        except self.MPI.Exception as err:
            self._failed(what, buf, err)
            raise

    def _failed(self, what: str, buf: np.ndarray, err) -> None:
        self.abort(f"{what} of {buf.dtype}{list(buf.shape)} failed: "
                   f"{err.Get_error_string()} (did another rank die?); aborting the job")

    def _timed_out(self, what: str, buf: np.ndarray) -> None:
        message = (f"{what} of {buf.dtype}{list(buf.shape)} did not complete within "
                   f"{self.timeout:g} s: another rank died, hangs, or runs a different step; "
                   "aborting the job")
        self.abort(message)
        raise CollectiveTimeout(message)  # reached only if Abort returns


def world(timeout: float = DEFAULT_TIMEOUT_S) -> LocalCommunicator:
    """The job's communicator: MPI ``COMM_WORLD`` (size 1 outside ``mpiexec``)."""
    return Communicator(None, timeout=timeout)


def get_communicator(spec, timeout: float = DEFAULT_TIMEOUT_S) -> LocalCommunicator:
    """A communicator from ``"mpi"`` (COMM_WORLD), ``"local"``, a communicator, or an
    mpi4py communicator."""
    if isinstance(spec, LocalCommunicator):
        return spec
    if spec in ("mpi", True):
        return world(timeout)
    if spec == "local":
        return LocalCommunicator()
    if hasattr(spec, "Get_size") and hasattr(spec, "Iallreduce"):
        return Communicator(spec, timeout=timeout)
    raise ValueError(f"distributed must be 'mpi', 'local', a graphdl communicator or an "
                     f"mpi4py communicator, got {spec!r}")


def mpi_available() -> bool:
    """True when mpi4py can be imported."""
    try:
        _mpi()
    except ImportError:
        return False
    return True


def _mpi():
    try:
        from mpi4py import MPI  # lazy: the optional [mpi] extra; single-process runs lack it
    except ImportError as err:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'graphdl[mpi]' (mpi4py and the mpich wheel)") from err
    return MPI


def _copy(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.array(x, copy=True)
    np.copyto(out, x)
    return out


def _inplace_target(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """The buffer an in-place all-reduce of ``x`` runs on: ``out`` (holding ``x``'s values;
    no copy when the memory plan put ``out`` over ``x``) or a new contiguous copy."""
    buf = out if out is not None and out.flags.c_contiguous and out.shape == x.shape \
        and out.flags.writeable else np.empty(x.shape, x.dtype)
    if not (buf.ctypes.data == x.ctypes.data and x.flags.c_contiguous):
        np.copyto(buf, x)
    return buf


def _target(out, like: np.ndarray) -> np.ndarray:
    """A contiguous buffer of ``like``'s shape: ``out`` when usable."""
    if out is not None and out.flags.c_contiguous and out.shape == like.shape:
        return out
    return np.empty(like.shape, like.dtype)


def _check_root(root: int, size: int) -> None:
    if not 0 <= root < size:
        raise ValueError(f"root rank {root} is outside the communicator's {size} rank(s)")
