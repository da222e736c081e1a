"""Data-parallel training over MPI: ``model.compile(..., distributed="mpi")``.

Run the same script on every rank (``mpiexec -n K python train.py``). Compiling with
``distributed`` rewrites the train step:
- every gradient is averaged over the ranks by an ``AllReduce(mean)`` node placed between the
  gradient and the optimizer subgraphs; the bucketing pass (:mod:`graphdl.passes.bucket`)
  packs them into flat buckets of ``bucket_bytes``;
- BatchNorm statistics are per rank by default; ``sync_batchnorm=True`` all-reduces the batch
  moments instead (the result equals one process's BatchNorm on the whole global batch);
- with ``overlap`` (the default on the NumPy executor), each bucket's all-reduce is started as
  soon as its last gradient exists and waited for right before the optimizer reads it
  (:func:`graphdl.passes.bucket.overlap_collectives`), the executor polling MPI between
  kernels so the reduction progresses while the backward pass goes on;
- the communicator is bound to the collectives at compile time (no global).

``fit`` then shards each epoch with :class:`DistributedSampler` semantics, broadcasts the
variables from rank 0 before the first step, all-reduces the metrics (one small host
collective per step, which also carries a "non-finite" flag so a NaN on any rank stops every
rank at the same step with the weights kept), prints progress on rank 0 only, and aborts the
job with a message when a rank raises. Checkpoints: :class:`Checkpoint` writes on rank 0,
atomically. Every collective runs under the communicator's watchdog (see :mod:`graphdl.comm`).

The batch size given to ``fit`` is per rank: one optimizer step consumes ``K * batch_size``
samples, exactly as one process with that batch would (tests check this to 1e-12).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphdl import tensor as F
from graphdl.callbacks import Callback
from graphdl.comm import DEFAULT_TIMEOUT_S, get_communicator
from graphdl.compiled_function import Function
from graphdl.ir import Graph, Node, Value, Variable, rebuild
from graphdl.ops.collective import all_reduce
from graphdl.ops.registry import apply, get_op
from graphdl.passes import optimize_graph
from graphdl.passes.bucket import DEFAULT_BUCKET_BYTES
from graphdl.passes.rewrite import match_value, op
from graphdl.split_step import SplitStep

__all__ = ["DataParallel", "DistributedSampler", "Checkpoint", "bind_communicator",
           "average_gradients", "synchronize_batchnorm", "broadcast_variables"]


@dataclass
class DataParallel:
    """How a model trains data-parallel: the communicator, the gradient bucket size in bytes
    (``None``: no bucketing), synchronized BatchNorm, the collective timeout (seconds),
    whether the last uneven samples are dropped (else padded from the epoch's start), and
    ``host_reduce``: run the step as a gradient graph and an apply graph with the all-reduce
    between them on host buffers (:mod:`graphdl.split_step`; what ONNX Runtime needs), and
    ``overlap``: start each bucket's all-reduce when its last gradient is ready and wait for
    it only before the optimizer (NumPy executor; results are unchanged)."""

    comm: Any = "mpi"
    bucket_bytes: int | None = DEFAULT_BUCKET_BYTES
    sync_batchnorm: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    drop_last: bool = False
    host_reduce: bool = False
    overlap: bool = True
    report: Any = field(default=None, repr=False)

    def __post_init__(self):
        self.comm = get_communicator(self.comm, self.timeout)

    @classmethod
    def of(cls, spec: Any) -> "DataParallel | None":
        """``None``, ``"mpi"``, a communicator or a :class:`DataParallel` -> a config."""
        if spec is None or spec is False:
            return None
        return spec if isinstance(spec, DataParallel) else cls(comm=spec)

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.comm.rank

    @property
    def size(self) -> int:
        """The number of ranks."""
        return self.comm.size

    # ---- the train step -----------------------------------------------------------------

    def train_step_graph(self, model, loss, optimizer, precision: str = "float32") -> Graph:
        """The model's train step with gradient all-reduces (and synchronized BN)."""
        forward = (lambda g: synchronize_batchnorm(g, self.size)) if self.sync_batchnorm \
            else None
        extra = {} if precision == "float32" else {"precision": precision}
        return model.train_step_graph(loss, optimizer, forward_hook=forward,
                                      grad_hook=lambda gs: average_gradients(gs, self.size),
                                      **extra)

    def compile_train_step(self, model, loss, optimizer, compile_fn=None,
                           precision: str = "float32"):
        """Optimize the data-parallel train step (bucketing included), bind the communicator
        and return the compiled :class:`graphdl.compiled_function.Function`; with
        ``host_reduce`` (or a ``compile_fn(graph)`` for each half, e.g. an ONNX Runtime
        session) a
        :class:`graphdl.split_step.SplitStep`."""
        split = self.host_reduce or compile_fn is not None
        graph, self.report = self.optimize(
            self.train_step_graph(model, loss, optimizer, precision),
            overlap=self.overlap and not split)  # a split step reduces between two graphs
        if split:
            step = SplitStep(graph, self.comm, compile_fn)
            step.report = self.report
            return step
        return Function(bind_communicator(graph, self.comm), report=self.report)

    def optimize(self, graph: Graph, overlap: bool = False):
        """The ``"data_parallel"`` pipeline: the training stages with gradient bucketing
        (``bucket_bytes``) before scheduling and, with ``overlap``, the start/done split after
        it."""
        return optimize_graph(graph, training=True, passes="data_parallel",
                              bucket_bytes=self.bucket_bytes, overlap=overlap)

    # ---- fit support --------------------------------------------------------------------

    def shard(self, n: int, batch_size: int, epoch_order: np.ndarray) -> np.ndarray:
        """This rank's sample indices for an epoch (see :class:`DistributedSampler`)."""
        return DistributedSampler(n, self.size, self.rank, self.drop_last).indices(
            epoch_order, batch_size)

    def allreduce_host(self, values) -> np.ndarray:
        """Sum a small float64 vector over the ranks."""
        return self.comm.allreduce_host(np.asarray(values, np.float64))

    def evaluate(self, model, xs, targets, batch_size, loss) -> dict[str, float]:
        """Loss and metrics over the whole set: each rank evaluates a strided shard, the sums
        are all-reduced (no padding, so every sample counts once)."""
        mine = np.arange(self.rank, len(targets), self.size)
        sums = _local_sums(model, [a[mine] for a in xs], targets[mine], batch_size, loss)
        total = self.allreduce_host(list(sums.values()) + [len(mine)])
        return {k: float(v) / total[-1] for k, v in zip(sums, total[:-1])}

    def abort(self, err: BaseException) -> None:
        """Abort every rank (size > 1) after a failure on this one; re-raise in one process."""
        if self.size > 1:
            self.comm.abort(f"{type(err).__name__}: {err}; aborting every rank")


class DistributedSampler:
    """torch's DistributedSampler semantics over an epoch order every rank computes alike.

    The order (the same shuffle seed on every rank) is padded from its start to a multiple of
    the rank count (or truncated with ``drop_last``); each global batch of
    ``size * batch_size`` samples is cut into ``size`` equal contiguous blocks and rank r takes
    block r. So every rank runs the same number of steps with equal batches, and one step
    sees exactly the samples one process with batch ``size * batch_size`` would.
    """

    def __init__(self, n: int, size: int, rank: int, drop_last: bool = False):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside 0..{size - 1}")
        self.n, self.size, self.rank, self.drop_last = n, size, rank, drop_last
        if n < size:
            raise ValueError(f"{n} samples cannot be shared by {size} ranks")

    def indices(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's indices, batch after batch, from the epoch ``order``."""
        k = self.size
        if self.drop_last:
            order = order[:len(order) - len(order) % k]
        elif len(order) % k:
            order = np.concatenate([order, order[:k - len(order) % k]])
        per_rank = len(order) // k
        chunks = []
        for start in range(0, per_rank, batch_size):
            m = min(batch_size, per_rank - start)  # this step's per-rank batch
            base = start * k
            chunks.append(order[base + self.rank * m: base + (self.rank + 1) * m])
        return np.concatenate(chunks) if chunks else order[:0]


class Checkpoint(Callback):
    """Save the model at the end of every ``every``-th epoch to ``path`` (``{epoch}`` is
    filled in), on rank 0 only, through a temporary file and a rename."""

    def __init__(self, path: str | os.PathLike, every: int = 1):
        self.path, self.every = os.fspath(path), int(every)
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Write the checkpoint (rank 0 only)."""
        if (epoch + 1) % self.every:
            return
        dp = getattr(self.model, "distributed", None)
        if dp is not None and dp.rank != 0:
            return
        path = self.path.format(epoch=epoch + 1)
        self.model.save(path)  # atomic: temp file in the same folder, then os.replace
        self.saved.append(path)


# ---- graph rewrites ----------------------------------------------------------------------

def average_gradients(grads: list[Value | None], size: int | None = None
                      ) -> list[Value | None]:
    """Each gradient averaged over the ranks by its own all-reduce (bucketable): with the
    rank count ``size`` known, a sum all-reduce times ``1 / size``, which fusion folds into
    the optimizer's elementwise update (no pass over the buckets of its own); else
    ``AllReduce(mean)``."""
    # bucket=True: the bucketing pass may pack these (they feed only the optimizer)
    if size is None:
        return [None if g is None else apply("AllReduce", g, reduction="mean", bucket=True)
                for g in grads]
    return [None if g is None else
            _scaled(apply("AllReduce", g, reduction="sum", bucket=True), 1.0 / size)
            for g in grads]


def _scaled(x: Value, scale: float) -> Value:
    return x if scale == 1.0 else x * scale


def bind_communicator(graph: Graph, comm) -> Graph:
    """A copy of ``graph`` whose collectives without a communicator get ``comm`` (the
    compile-time binding; runs after the passes, so no collective runs at compile time)."""
    def bind(node: Node, inputs):
        if not get_op(node.op).collective or node.attrs.get("comm") is not None:
            return None
        return Node(node.op, inputs, {**node.attrs, "comm": comm}, node.types, node.name,
                    node.site).outputs
    mapping: dict[int, Value] = {}
    out = rebuild(graph, bind, mapping)
    if out is graph:
        return graph
    # keep the schedule (the overlap's placement of starts and dones is part of it)
    order = [mapping.get(id(n.outputs[0]), n.outputs[0]).node if n.outputs else n
             for n in graph.nodes]
    return Graph(out.inputs, out.outputs, out.updates, out.name, order=order)


_TRAINING_BATCHNORM = op("BatchNorm", where=lambda v: v.node.attrs["training"])
# ^ batchnorm(x, scale, bias, mean, var) in training form: the nodes synchronize_batchnorm syncs


def synchronize_batchnorm(graph: Graph, world_size: int) -> Graph:
    """Training BatchNorm nodes rewritten to all-reduce their batch moments: the mean and the
    biased variance over every rank's batch (equal batches per rank), the running variance
    updated with the unbiased variance of ``world_size`` times the local count."""
    def sync(node: Node, inputs):
        if match_value(_TRAINING_BATCHNORM, node.outputs[0], {}) is None:
            return None
        x, scale, bias, running_mean, running_var = inputs
        eps, m = float(node.attrs["eps"]), float(node.attrs["momentum"])  # filled in by apply
        axes = (0,) + tuple(range(2, x.ndim))
        cs = (1, -1) + (1,) * (x.ndim - 2)
        mean = all_reduce(F.mean(x, axes), "mean")  # mean of equal-sized means
        centred = x - F.reshape(mean, cs)
        var = all_reduce(F.mean(centred * centred, axes), "mean")
        y = centred * F.reshape(scale / F.sqrt(var + eps), cs) + F.reshape(bias, cs)
        n = F.numel(x, axes) * float(world_size)
        new_mean = running_mean * (1.0 - m) + mean * m
        new_var = running_var * (1.0 - m) + var * (n / (n - 1.0)) * m  # unbiased, as torch
        return [y, new_mean, new_var]
    return rebuild(graph, sync)


def broadcast_variables(variables: list[Variable], comm, root: int = 0) -> None:
    """Give every rank rank ``root``'s variable values (one flat broadcast per dtype)."""
    if comm.size == 1:
        return
    by_dtype: dict[str, list[Variable]] = {}
    for v in variables:
        by_dtype.setdefault(v.value.dtype.str, []).append(v)
    for dtype in sorted(by_dtype):
        group = by_dtype[dtype]
        flat = np.concatenate([np.ravel(v.value) for v in group]) if group else None
        flat = comm.broadcast(flat, None, root)
        offset = 0
        for v in group:
            size = v.value.size
            v.value = flat[offset:offset + size].reshape(v.value.shape).copy()
            offset += size


def _local_sums(model, xs, targets, batch_size, loss) -> dict[str, float]:
    """Sums (not means) of the loss and the metrics over this rank's samples."""
    fn = model._eval_function(loss)
    sums = {"loss": 0.0, **{name: 0.0 for name, _ in model.metrics}}
    for start in range(0, len(targets), batch_size):
        idx = slice(start, start + batch_size)
        yb = targets[idx]
        loss_value, out = fn(*[a[idx] for a in xs], yb)
        sums["loss"] += float(loss_value) * len(yb)
        for name, metric in model.metrics:
            sums[name] += float(np.sum(metric(out, yb)))
    return sums
