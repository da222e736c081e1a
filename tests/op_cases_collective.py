"""Op cases for the MPI collectives (graphdl/ops/collective.py), run in one process.

With a single-process communicator every collective is the identity, so the registry's op
tests (inference vs kernel, out= buffers, finite differences, torch) cover them in-process:
once with :class:`graphdl.comm.LocalCommunicator` and, where mpi4py is installed, once with
mpi4py's ``COMM_SELF`` through the MPI buffer path. Their ONNX lowerings refuse by name
(tests/test_ops.py and tests/test_onnx_ops.py check the refusal). Multi-rank behaviour is
tested under ``mpiexec`` in tests/test_distributed*.py.
"""
from __future__ import annotations

from graphdl.comm import Communicator, LocalCommunicator, mpi_available
from tests.op_case import OpCase, rng


def _communicators():
    comms = [("local", LocalCommunicator())]
    if mpi_available():
        from mpi4py import MPI

        comms.append(("comm_self", Communicator(MPI.COMM_SELF, timeout=60.0)))
    return comms


def _identity(x):
    return x * 1


def _cases():
    cases: dict[str, list[OpCase]] = {}
    for label, comm in _communicators():
        x = rng(7).normal(size=(4, 3))
        add = lambda op, attrs, tag: cases.setdefault(op, []).append(  # noqa: E731
            OpCase([x], {**attrs, "comm": comm}, torch=_identity, id=f"{tag}-{label}"))
        add("AllReduce", {"reduction": "sum"}, "sum")
        add("AllReduce", {"reduction": "mean"}, "mean")
        add("AllReduceStart", {"reduction": "sum"}, "sum")  # as a value: AllReduce
        add("AllReduceStart", {"reduction": "mean"}, "mean")
        add("AllReduceDone", {"reduction": "mean"}, "mean")  # as a value: the identity
        add("Broadcast", {"root": 0}, "root0")
        add("Reduce", {"root": 0}, "root0")
        add("AllGather", {"world_size": 1}, "k1")
        add("ReduceScatter", {"world_size": 1}, "k1")
    return cases


CASES = _cases()
