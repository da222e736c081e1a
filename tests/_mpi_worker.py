"""Run under ``mpiexec -n K`` by tests/test_distributed.py (not a test module itself).

``python -m tests._mpi_worker train OUT``: data-parallel fits (SGD, Adam, bucketed and not,
synchronized BatchNorm) whose weights and per-step losses go to ``OUT/<case>_<rank>.npy``.
``... raise|kill|hang OUT``: rank 1 raises, is killed, or hangs at step 3.
``... leak OUT``: rank 1's step fails between an all-reduce's start and its done; both ranks
save what was left in flight and the result of the next (good) step.
The model builders and data are shared with the test, which runs the one-process references.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import graphdl as gd
from graphdl import layers as L
from graphdl.callbacks import Callback
from graphdl.distributed import DataParallel

B = 4  # per-rank batch
STEPS = 20


def data(ranks: int = 2):
    """float64 samples for exactly STEPS global steps of ranks*B samples."""
    r = np.random.default_rng(0)
    n = STEPS * ranks * B
    return r.normal(size=(n, 6)), r.integers(0, 3, n)


def mlp():
    """A small float64 classifier."""
    return gd.Sequential([L.Dense(12), gd.relu, L.Dense(3)], input_shape=(6,), dtype="float64")


def bn_mlp():
    """A small float64 classifier with BatchNorm (no bias before it: BatchNorm cancels it,
    its gradient is rounding noise, and Adam would amplify noise to steps of size lr)."""
    return gd.Sequential([L.Dense(12, use_bias=False), L.BatchNorm1D(), gd.relu, L.Dense(3)],
                         input_shape=(6,), dtype="float64")


OPTIMIZERS = {"sgd": lambda: gd.optim.SGD(0.1, momentum=0.9), "adam": lambda: gd.optim.Adam(1e-2)}


class StepLosses(Callback):
    """Records every step's (all-reduced) loss."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def fit(model, opt, batch_size, distributed=None, callbacks=(), backend=None):
    """Fit one epoch; returns weights and step losses flattened into one vector."""
    r = np.random.default_rng(1)  # the same start everywhere, whatever the layer names
    model.set_weights([np.ones(w.shape) if v.name.endswith("running_var") else
                       np.zeros(w.shape) if v.name.endswith("running_mean") else
                       r.normal(scale=0.4, size=w.shape)
                       for v, w in zip(model.variables, model.get_weights())])
    rec = StepLosses()
    model.compile(OPTIMIZERS[opt](), "cross_entropy", metrics=["accuracy"],
                  distributed=distributed, **({"backend": backend} if backend else {}))
    X, y = data()
    model.fit(X, y, epochs=1, batch_size=batch_size, seed=3, verbose=0,
              callbacks=[rec, *callbacks])
    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    return np.concatenate([weights, rec.losses])


def train(out: str) -> None:
    for name, build, opt, options in (
            ("sgd", mlp, "sgd", {"bucket_bytes": None}),
            ("adam", mlp, "adam", {"bucket_bytes": None}),
            ("adam_bucketed", mlp, "adam", {"bucket_bytes": 700}),
            ("adam_serial", mlp, "adam", {"bucket_bytes": 700, "overlap": False}),
            ("adam_host", mlp, "adam", {"bucket_bytes": 700, "host_reduce": True}),
            ("syncbn", bn_mlp, "adam", {"sync_batchnorm": True})):
        dp = DataParallel("mpi", timeout=60.0, **options)
        model = build()
        dp.comm.stats.reset()
        result = fit(model, opt, B, dp)
        rows = [r.rules for r in dp.report.rows if r.name == "bucket_gradients"]
        counts = np.array([rows[0]["collectives_before"], rows[0]["collectives_after"],
                           dp.comm.stats.calls, dp.comm.pending] if rows else
                          [-1, -1, dp.comm.stats.calls, dp.comm.pending])
        np.save(os.path.join(out, f"{name}_{dp.rank}.npy"), result)
        np.save(os.path.join(out, f"{name}_counts_{dp.rank}.npy"), counts)
    if ort_training():  # the split step on ONNX Runtime sessions sharing the device state
        dp = DataParallel("mpi", timeout=60.0, bucket_bytes=700)
        result = fit(mlp(), "adam", B, dp, backend="onnxruntime")
        np.save(os.path.join(out, f"adam_ort_{dp.rank}.npy"), result)


def ort_training() -> bool:
    """Whether this build trains on ONNX Runtime (issue 10's backends/ort_train.py)."""
    import importlib.util

    return importlib.util.find_spec("graphdl.backends.ort_train") is not None


class Fault(Callback):
    """Rank 1 raises, kills itself, or hangs, at step 3."""

    def __init__(self, how: str, rank: int):
        self.how, self.rank = how, rank

    def on_train_batch_end(self, batch, logs=None):
        if batch == 2 and self.rank == 1:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "hang":
                time.sleep(120)
            raise ValueError("rank 1 hit a bad batch on purpose")


def nan(out: str) -> None:
    """One sample of rank 1's 6th batch overflows; every rank must stop at that step."""
    import re

    from graphdl.training import NonFiniteLossError

    dp = DataParallel("mpi", timeout=20.0)
    model = mlp()
    model.set_weights([10 * w for w in model.get_weights()])  # so that 1e308 overflows
    model.compile("sgd", "cross_entropy", distributed=dp)
    X, y = data()
    order = np.random.default_rng(3).permutation(len(y))
    X[order[5 * 2 * B + B + 1]] = 1e308  # global step 6, rank 1's block
    rec = StepLosses()
    try:
        model.fit(X, y, epochs=1, batch_size=B, seed=3, verbose=0, callbacks=[rec])
        step = -1
    except NonFiniteLossError as err:
        step = int(re.search(r"batch (\d+)/", str(err)).group(1))
        print(f"rank {dp.rank}: {err}", flush=True)
    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    np.save(os.path.join(out, f"nan_{dp.rank}.npy"), np.r_[step, len(rec.losses), weights])


def leak(out: str) -> None:
    """A step whose all-reduce starts before a kernel that fails on rank 1 only (a NaN
    under check_finite): rank 1 must complete the started all-reduce (so rank 0's step ends
    too) and leave nothing in flight; then a good step runs on both."""
    from graphdl.backends.numpy_executor import ExecutionError
    from graphdl.distributed import bind_communicator
    from graphdl.compiled_function import Function
    from graphdl.ir import Graph
    from graphdl.ops.collective import all_reduce
    from graphdl.passes.bucket import overlap_collectives

    dp = DataParallel("mpi", timeout=20.0)
    a = gd.input("a", (1000,), "float64")
    b = gd.input("b", (1000,), "float64")
    graph = overlap_collectives(Graph([a, b], [all_reduce(a, "mean") + gd.exp(b) * 2.0]))
    ops = [n.op for n in graph.nodes]
    step = Function(bind_communicator(graph, dp.comm), check_finite=True)
    x = np.full(1000, dp.rank + 1.0)
    bad = np.full(1000, np.nan if dp.rank == 1 else 0.0)
    try:
        step(x, bad)
        failed = 0
    except ExecutionError as err:
        failed = 1
        print(f"rank {dp.rank}: {err}", flush=True)
    left = dp.comm.pending
    good = step(x, np.zeros(1000))[0]
    np.save(os.path.join(out, f"leak_{dp.rank}.npy"),
            np.r_[failed, left, dp.comm.pending,
                  ops.index("AllReduceStart") < ops.index("Exp") < ops.index("AllReduceDone"),
                  good])


def fault(how: str) -> None:
    dp = DataParallel("mpi", timeout=5.0)
    fit(mlp(), "sgd", B, dp, callbacks=[Fault(how, dp.rank)])
    print("finished without the fault", flush=True)


if __name__ == "__main__":
    mode, target = sys.argv[1], sys.argv[2]
    {"train": train, "nan": nan, "leak": leak}.get(mode, lambda out: fault(mode))(target)
