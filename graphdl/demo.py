"""``graphdl demo``: train the small CNN on the real 8x8 handwritten digits, end to end.

Steps: load scikit-learn's digits (1,797 real 8x8 images; no network), hold out a fixed,
seeded 20% test split, train ``gd.models.cnn`` with the one-graph train step, print the test
accuracy and training time, save the weights, write a training-curve PNG, print the model
summary. Then, when those parts of graphdl are present, export the model to ONNX and check
ONNX Runtime against the NumPy executor, and print the optimizer's pass report and memory
plan. Everything goes under ``out_dir``; ``results.json`` collects the numbers.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import numpy as np

import graphdl as gd
from graphdl import atomic, optim
from graphdl.atomic import atomic_path
from graphdl.distributed import DataParallel

SPLIT_SEED = 0  # the hold-out split is fixed, whatever --seed says, so runs compare
TEST_FRACTION = 0.2
DEFAULT_EPOCHS = 12
DEFAULT_BATCH_SIZE = 32
ORT_TOLERANCE = 1e-5


class DemoDataError(RuntimeError):
    """The demo's data cannot be loaded (scikit-learn is missing)."""


def load_digits_split(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """(x_train, y_train, x_test, y_test): digits as float32 (N, 1, 8, 8) in [0, 1], int64
    labels, split by a seeded permutation with ``ceil(test_fraction * N)`` test images."""
    try:
        from sklearn.datasets import load_digits  # lazy: optional extra, ~4 s to import
    except ImportError as err:
        raise DemoDataError("graphdl demo needs scikit-learn for the digits data; install "
                            "the examples extra: pip install -e '.[examples]'") from err
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(math.ceil(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def build_model(seed: int = 0):
    """The demo model: ``gd.models.cnn`` for 10 classes of 1x8x8 images."""
    return gd.models.cnn(num_classes=10, input_shape=(1, 8, 8), seed=seed)


def make_optimizer(epochs: int, steps_per_epoch: int):
    """Adam with cosine decay of the learning rate over the whole run (computed in-graph)."""
    total = max(epochs * steps_per_epoch, 1)
    return optim.Adam(optim.CosineLR(3e-3, t_max=total, eta_min=1e-4))


def blas_threads(count: int | None):
    """A context limiting BLAS to ``count`` threads (None or 0: leave it alone).

    The demo's matrices are tiny (at most 32x288 by 288x64 per batch): splitting them across
    threads costs more than it gains, and on a busy machine OpenBLAS's waiting threads made a
    train step ten times slower (measured: 129 ms against 11 ms). Uses threadpoolctl, which
    scikit-learn (the demo's data source) depends on; without it, nothing changes.
    """
    if not count:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # lazy: optional (via scikit-learn)
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=count, user_api="blas")


def train_digits(epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                 seed: int = 0, verbose: int = 0, console=None, threads: int | None = 1,
                 distributed: Any = None, backend: str = "numpy", providers: str = "auto"):
    """Train the demo model on the digits' training split, validating on the hold-out.

    ``distributed`` (e.g. ``"mpi"`` under ``mpiexec -n K``) trains data-parallel with the same
    global batch: each rank takes ``batch_size // K`` samples per step.
    ``backend="onnxruntime"`` trains on ONNX Runtime (``providers``: auto, cpu, cuda).
    Returns (model, history, fit_seconds, (x_test, y_test)).
    """
    x_train, y_train, x_test, y_test = load_digits_split()
    model = build_model(seed)
    steps = -(-len(y_train) // batch_size)
    ort_threads = (threads or None) if backend == "onnxruntime" else None
    model.compile(optimizer=make_optimizer(epochs, steps), loss="cross_entropy",
                  metrics=["accuracy"], distributed=distributed, backend=backend,
                  providers=providers, threads=ort_threads)
    if model.distributed is not None:
        batch_size = max(1, batch_size // model.distributed.size)
    with blas_threads(threads):
        start = time.perf_counter()
        history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size,
                            validation_data=(x_test, y_test), seed=seed, verbose=verbose,
                            console=console)
        fit_seconds = time.perf_counter() - start
    return model, history, fit_seconds, (x_test, y_test)


def run_demo(epochs: int = DEFAULT_EPOCHS, out_dir: str = "graphdl_demo_out", seed: int = 0,
             batch_size: int = DEFAULT_BATCH_SIZE, verbose: int = 1, console=None,
             threads: int | None = 1, distributed: bool = False, backend: str = "numpy",
             providers: str = "auto") -> dict | None:
    """Run the whole demo; returns the results it also writes to ``out_dir/results.json``.

    ``threads`` limits BLAS threads while training (see :func:`blas_threads`), or ORT's
    intra-op threads with ``backend="onnxruntime"``.
    ``distributed=True`` (one rank of ``mpiexec -n K graphdl demo --distributed``) trains
    data-parallel; rank 0 reports and writes, the other ranks return None after evaluating.
    """
    from rich.console import Console  # lazy: `graphdl --help` reads this module's defaults

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: wide enough for the pass report table
            console = Console(width=120)
    dp = None
    if distributed:
        dp = DataParallel("mpi")
        if dp.rank != 0:  # one report for the job
            verbose, console = 0, Console(quiet=True)
    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits_split()
    console.print(f"[bold]graphdl demo[/bold]: {len(y_train)} training and {len(y_test)} "
                  f"held-out 8x8 digits (scikit-learn load_digits, split seed {SPLIT_SEED})"
                  + (f", data-parallel on {dp.size} MPI ranks" if dp else ""))
    model, history, fit_seconds, _ = train_digits(epochs, batch_size, seed, verbose, console,
                                                  threads, dp, backend, providers)
    test_loss, test_accuracy = model.evaluate(x_test, y_test)  # all-reduced under MPI
    if dp is not None and dp.rank != 0:
        return None
    trained_on = backend
    if backend == "onnxruntime":
        providers_used = model._train_function().providers
        trained_on = f"onnxruntime ({providers_used[0]})"
        console.print(f"trained on ONNX Runtime, provider [bold]{providers_used[0]}[/bold]",
                      highlight=False)
    results: dict[str, Any] = {
        "backend": trained_on,
        "model": model.name, "params": model.num_params(), "epochs": epochs,
        "batch_size": batch_size, "seed": seed, "train_samples": int(len(y_train)),
        "test_samples": int(len(y_test)), "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss), "fit_seconds": fit_seconds,
        "ranks": dp.size if dp else 1,
        "train_step_seconds": history.train_seconds, "history": history.history,
    }
    console.print(f"test accuracy [bold]{test_accuracy:.2%}[/bold] on {len(y_test)} held-out "
                  f"digits; training took {fit_seconds:.1f} s ({history.train_seconds:.1f} s in "
                  f"train steps, {epochs} epochs)", highlight=False)
    weights = os.path.join(out_dir, "digits_cnn.npz")
    model.save(weights)
    results["weights"] = weights
    console.print(f"weights saved to {weights}")
    curve = write_training_curve(history, os.path.join(out_dir, "training_curve.png"))
    results["training_curve"] = curve
    console.print(f"training curve written to {curve}" if curve else
                  "training curve skipped (matplotlib is not installed: "
                  "pip install -e '.[examples]')")
    model.summary(console=console)
    results["onnx"] = check_onnx(model, x_test, out_dir, console)
    results["optimize"] = report_optimization(model, console, batch_size)
    write_json(os.path.join(out_dir, "results.json"), results)
    return results


def write_training_curve(history, path: str) -> str | None:
    """Loss and accuracy per epoch (train and hold-out) as a PNG; None without matplotlib."""
    try:  # lazy: matplotlib is the optional "examples" extra
        from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched
    except ImportError:
        return None
    h = history.history
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, h["loss"], label="train")
    if "val_loss" in h:
        ax_loss.plot(epochs, h["val_loss"], label="hold-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, h.get("accuracy", []), label="train")
    if "val_accuracy" in h:
        ax_acc.plot(epochs, h["val_accuracy"], label="hold-out")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("graphdl cnn on 8x8 digits")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def check_onnx(model, x_test: np.ndarray, out_dir: str, console) -> dict:
    """Export to ONNX, run it on ONNX Runtime and compare with the NumPy executor (issue 4)."""
    path = os.path.join(out_dir, "digits_cnn.onnx")
    model.export_onnx(path)
    run = gd.compile(model, backend="onnxruntime", providers="auto")
    ort_out = np.asarray(run(x_test))
    numpy_out = model.predict(x_test)
    diff = float(np.max(np.abs(ort_out - numpy_out)))
    agree = bool(diff <= ORT_TOLERANCE * max(1.0, float(np.max(np.abs(numpy_out)))))
    same_class = float(np.mean(ort_out.argmax(1) == numpy_out.argmax(1)))
    verdict = "[green]agree[/green]" if agree else "[red]DISAGREE[/red]"
    console.print(f"ONNX: exported to {path}; ONNX Runtime ({', '.join(run.providers)}) vs "
                  f"NumPy executor max |diff| {diff:.2e} (tolerance {ORT_TOLERANCE:g}): "
                  f"{verdict}")
    return {"status": "ok" if agree else "mismatch", "path": path, "max_abs_diff": diff,
            "same_prediction": same_class, "providers": list(run.providers)}


def report_optimization(model, console, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """Print ``gd.optimize``'s per-pass report and the memory plan (issue 5)."""
    result = gd.optimize(model, training=False, batch_size=batch_size)
    console.print(result)
    memory = result.memory_plan().as_dict()
    numbers = {label: int(memory[key]) for label, key in (
        ("no_reuse", "no_reuse_bytes"), ("planned", "planned_bytes"),
        ("lower_bound", "lower_bound_bytes"))}
    console.print(f"memory plan at batch {batch_size}: no reuse {numbers['no_reuse']:,} "
                  f"bytes, planned {numbers['planned']:,} bytes, lower bound "
                  f"{numbers['lower_bound']:,} bytes (planned / bound "
                  f"{numbers['planned'] / max(numbers['lower_bound'], 1):.2f})",
                  highlight=False)
    return {"status": "ok", "memory": numbers, "report": result.report.to_dict()}


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as JSON through a temp file and ``os.replace``."""
    atomic.write_json(path, data, default=_jsonable)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
