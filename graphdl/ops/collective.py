"""Collectives across MPI ranks: AllReduce (sum/mean), Broadcast, Reduce, AllGather and
ReduceScatter.

Every rank runs the same graph (SPMD). The communicator is not a global: it is the node's
``comm`` attribute, filled in at compile time (``graphdl.distributed.bind_communicator``, or
``model.compile(distributed=...)``). A kernel with no communicator bound raises, naming the
op and where it was made. Kernels call the communicator's buffer methods (mpi4py's
``Iallreduce``/``Ibcast``/... on contiguous NumPy arrays, never pickling). With a
single-process communicator (size 1) every collective is the identity, so the registry's
op tests (finite differences, the executor) exercise them in one process.

VJPs use the "sum of the ranks' losses" convention (JAX's psum transpose): the VJP of a sum
all-reduce is a sum all-reduce, of a mean all-reduce a mean all-reduce; Broadcast and Reduce
are each other's VJP, and so are AllGather and ReduceScatter.

Overlap, as XLA's all-reduce-start/-done: ``AllReduceStart`` starts an in-place nonblocking
all-reduce of its buffer and ``AllReduceDone`` waits for it, so the kernels scheduled between
them run while the reduction progresses (:func:`graphdl.passes.bucket.overlap_collectives`
places them). As values, ``AllReduceStart(x)`` is ``AllReduce(x)`` and ``AllReduceDone`` is the
identity; only Done's output may be read.

A graph with collectives is not a single-process computation, so the ONNX lowerings refuse by
name; the ONNX Runtime backend splits the train step around the all-reduce instead.
"""
from __future__ import annotations

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import Attr, LoweringError, OpDef, apply, fail, register

__all__ = ["all_reduce", "all_reduce_start", "all_reduce_done", "broadcast", "reduce_to_root", "all_gather", "reduce_scatter"]

REDUCE_OPS = ("sum", "mean")


def all_reduce(x, op: str = "sum", comm=None):
    """Every rank gets the elementwise sum (or mean) of ``x`` over the ranks."""
    return apply("AllReduce", x, reduction=op, **_comm_attr(comm))


def all_reduce_start(x, op: str = "sum", comm=None):
    """Start an all-reduce of ``x``; its value may be read only through
    :func:`all_reduce_done`."""
    return apply("AllReduceStart", x, reduction=op, **_comm_attr(comm))


def all_reduce_done(started, op: str = "sum", comm=None):
    """The result of the all-reduce ``started`` (waits for it where it runs)."""
    return apply("AllReduceDone", started, reduction=op, **_comm_attr(comm))


def broadcast(x, root: int = 0, comm=None):
    """Every rank gets rank ``root``'s ``x``."""
    return apply("Broadcast", x, root=int(root), **_comm_attr(comm))


def reduce_to_root(x, root: int = 0, comm=None):
    """Rank ``root`` gets the sum of ``x`` over the ranks; the other ranks get zeros."""
    return apply("Reduce", x, root=int(root), **_comm_attr(comm))


def all_gather(x, world_size: int, comm=None):
    """Every rank gets the ranks' ``x`` concatenated along axis 0 (rank order)."""
    return apply("AllGather", x, world_size=int(world_size), **_comm_attr(comm))


def reduce_scatter(x, world_size: int, comm=None):
    """Rank r gets block r (along axis 0) of the sum of ``x`` over the ranks."""
    return apply("ReduceScatter", x, world_size=int(world_size), **_comm_attr(comm))


def _comm_attr(comm) -> dict:
    return {} if comm is None else {"comm": comm}


def communicator_of(op: str, attrs: dict):
    """The node's bound communicator, or a clear error when none was supplied."""
    comm = attrs.get("comm")
    if comm is None:
        raise RuntimeError(
            f"{op} has no communicator: collectives get theirs at compile time "
            "(model.compile(distributed='mpi'), or graphdl.distributed.bind_communicator)")
    return comm


# ---- inference ----------------------------------------------------------------------------

def _same_infer(name: str):
    def infer(types, attrs):
        check_arity(name, types, 1)
        (x,) = types
        if name.startswith("AllReduce") and attrs["reduction"] not in REDUCE_OPS:
            raise fail(name, f"reduction must be one of {REDUCE_OPS}, got {attrs.get('reduction')!r}", types)
        if attrs.get("reduction") == "mean" and x.dtype not in FLOAT_DTYPES:
            raise fail(name, f"a mean needs a floating-point input, got {x.dtype}", types)
        if "root" in attrs and int(attrs["root"]) < 0:
            raise fail(name, f"root must be a rank >= 0, got {attrs['root']}", types)
        return [x]
    return infer


def _world_size(name, types, attrs) -> int:
    k = attrs.get("world_size")
    if not isinstance(k, int) or k < 1:
        raise fail(name, f"needs world_size=K (the number of ranks, >= 1), got {k!r}", types)
    if types[0].rank == 0 or not isinstance(types[0].shape[0], int):
        raise fail(name, "needs a static first axis (the blocks are split along axis 0)",
                   types)
    return k


def _gather_infer(types, attrs):
    check_arity("AllGather", types, 1)
    k = _world_size("AllGather", types, attrs)
    x = types[0]
    return [TensorType((x.shape[0] * k,) + x.shape[1:], x.dtype)]


def _scatter_infer(types, attrs):
    check_arity("ReduceScatter", types, 1)
    k = _world_size("ReduceScatter", types, attrs)
    x = types[0]
    if x.shape[0] % k:
        raise fail("ReduceScatter", f"axis 0 ({x.shape[0]}) does not split into {k} equal "
                   "blocks", types)
    return [TensorType((x.shape[0] // k,) + x.shape[1:], x.dtype)]


# ---- kernels ------------------------------------------------------------------------------

def _allreduce_kernel(xs, attrs, out):
    return communicator_of("AllReduce", attrs).allreduce(xs[0], out, attrs["reduction"])


def _start_kernel(xs, attrs, out):
    return communicator_of("AllReduceStart", attrs).allreduce_start(xs[0], out)


def _done_kernel(xs, attrs, out):
    return communicator_of("AllReduceDone", attrs).allreduce_done(
        xs[0], attrs["reduction"])


def _bcast_kernel(xs, attrs, out):
    return communicator_of("Broadcast", attrs).broadcast(xs[0], out, int(attrs["root"]))


def _reduce_kernel(xs, attrs, out):
    return communicator_of("Reduce", attrs).reduce(xs[0], out, int(attrs["root"]))


def _check_size(op, comm, attrs):
    if comm.size != attrs["world_size"]:
        raise RuntimeError(f"{op} was built for world_size={attrs['world_size']} but runs on "
                           f"a communicator of {comm.size} ranks")


def _gather_kernel(xs, attrs, out):
    comm = communicator_of("AllGather", attrs)
    _check_size("AllGather", comm, attrs)
    return comm.allgather(xs[0], out)


def _scatter_kernel(xs, attrs, out):
    comm = communicator_of("ReduceScatter", attrs)
    _check_size("ReduceScatter", comm, attrs)
    return comm.reduce_scatter(xs[0], out)


# ---- VJPs (sum of the ranks' losses) ------------------------------------------------------

def _keep_comm(node) -> dict:
    return _comm_attr(node.attrs.get("comm"))


def _allreduce_vjp(F, node, grads):
    (g,) = grads  # d/dx_k sum_j <g_j, op_k x_k> = op_j g_j (sum: sum; mean: mean)
    return [apply("AllReduce", g, reduction=node.attrs["reduction"], **_keep_comm(node))]


def _start_vjp(F, node, grads):
    (g,) = grads  # Start(x) is AllReduce(x) as a value
    return [apply("AllReduce", g, reduction=node.attrs["reduction"], **_keep_comm(node))]


def _done_vjp(F, node, grads):
    return [grads[0]]  # the identity as a value


def _bcast_vjp(F, node, grads):
    (g,) = grads  # y_j = x_root for all j: only the root's x is read, by every rank
    return [apply("Reduce", g, root=int(node.attrs["root"]), **_keep_comm(node))]


def _reduce_vjp(F, node, grads):
    (g,) = grads  # y_root = sum_k x_k: every x_k gets the root's cotangent
    return [apply("Broadcast", g, root=int(node.attrs["root"]), **_keep_comm(node))]


def _gather_vjp(F, node, grads):
    (g,) = grads  # block k of every rank's output is x_k: sum the cotangents' block k
    return [apply("ReduceScatter", g, world_size=node.attrs["world_size"], **_keep_comm(node))]


def _scatter_vjp(F, node, grads):
    (g,) = grads  # block k of sum_j x_j goes to rank k: every x_j gets all blocks' cotangents
    return [apply("AllGather", g, world_size=node.attrs["world_size"], **_keep_comm(node))]


# ---- ONNX: refused, by name ---------------------------------------------------------------

def _refuse(name: str):
    def lowering(attrs, tin, tout, opset):
        raise LoweringError(
            f"{name} is a collective across MPI ranks: a graph with collectives cannot be "
            "exported as a single-process ONNX file. Export the per-rank gradient and apply "
            "graphs instead (graphdl.distributed.split_train_step) and reduce between them "
            "on the host")
    return lowering


_COMM = Attr(object, None, "the communicator, bound at compile time")
_ROOT = Attr(int, 0, "the root rank")
_WORLD = Attr(int, None, "the number of ranks (checked by inference)")
_COLLECTIVE_ATTRS = {
    "AllReduce": {"comm": _COMM, "reduction": Attr(str, "sum", "how ranks combine"),
                  "bucket": Attr(bool, False, "the bucketing pass may pack it with others")},
    "AllReduceStart": {"comm": _COMM, "reduction": Attr(str, "sum", "how ranks combine")},
    "AllReduceDone": {"comm": _COMM, "reduction": Attr(str, "sum", "how ranks combine")},
    "Broadcast": {"comm": _COMM, "root": _ROOT},
    "Reduce": {"comm": _COMM, "root": _ROOT},
    "AllGather": {"comm": _COMM, "world_size": _WORLD},
    "ReduceScatter": {"comm": _COMM, "world_size": _WORLD},
}

for _name, _infer, _kernel, _vjp, _doc in (
        ("AllReduce", _same_infer("AllReduce"), _allreduce_kernel, _allreduce_vjp,
         "sum or mean of x over the ranks, on every rank"),
        ("Broadcast", _same_infer("Broadcast"), _bcast_kernel, _bcast_vjp,
         "rank root's x on every rank"),
        ("Reduce", _same_infer("Reduce"), _reduce_kernel, _reduce_vjp,
         "sum of x over the ranks on rank root, zeros elsewhere"),
        ("AllGather", _gather_infer, _gather_kernel, _gather_vjp,
         "the ranks' x concatenated along axis 0"),
        ("ReduceScatter", _scatter_infer, _scatter_kernel, _scatter_vjp,
         "block r (axis 0) of the sum over the ranks, on rank r")):
    register(OpDef(_name, _infer, _kernel, _vjp, _refuse(_name), collective=True, doc=_doc,
                   attrs=_COLLECTIVE_ATTRS[_name],
                   overlap=("AllReduceStart", "AllReduceDone") if _name == "AllReduce" else None))

# the started buffer may be the dying input's own storage (an in-place reduction: no copy);
# Done returns its input's buffer once the reduction completed
register(OpDef("AllReduceStart", _same_infer("AllReduceStart"), _start_kernel, _start_vjp,
               _refuse("AllReduceStart"), collective=True, nonblocking=True, inplace=True,
               attrs=_COLLECTIVE_ATTRS["AllReduceStart"],
               doc="start an all-reduce of x (read it through AllReduceDone)"))
register(OpDef("AllReduceDone", _same_infer("AllReduceDone"), _done_kernel, _done_vjp,
               _refuse("AllReduceDone"), collective=True, view=True, waits=True,
               attrs=_COLLECTIVE_ATTRS["AllReduceDone"],
               doc="the result of a started all-reduce, once it completed"))
