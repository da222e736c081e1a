"""The Keras-style loop: ``compile``, ``fit``, ``evaluate`` and ``predict``.

``fit`` compiles the whole train step (forward, loss, gradients, optimizer and BatchNorm
updates) into one function once, then runs it per shuffled mini-batch. Each step runs without
writing state back; the loss is checked first, so a step whose loss is NaN/Inf changes nothing
and stops training with an error naming the epoch and batch.

Data checks run before any training: X must match the model input's shape (batch first);
floating-point X of another precision (e.g. float64 from NumPy or scikit-learn) is converted
to the model's dtype, as Keras does, while integer or bool X is refused rather than silently
scaled (convert it yourself, e.g. ``X.astype(np.float32) / 255``). Targets are checked
against the loss (integer labels within the model's classes for cross-entropy).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from graphdl import losses as _losses, optim as _optim, passes as _passes
from graphdl.callbacks import Callback, History
from graphdl.distributed import DataParallel, broadcast_variables
from graphdl.compiled_function import function
from graphdl.ir import Graph, GraphError, Value, Variable
from graphdl.progress import FitProgress


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the weights are those from before that step."""


class TrainableModel(Protocol):
    """What :class:`TrainingMixin` needs from the class it is mixed into (``gd.Model``).

    The host gives the graphs; the mixin compiles and runs them. In the other direction the
    mixin gives ``compile``/``fit``/``evaluate``/``predict``, the attributes ``optimizer``,
    ``loss``, ``metrics``, ``distributed``, ``history`` and ``stop_training``, and
    :meth:`TrainingMixin._reset_compiled_functions`, which the host must call whenever its
    graph changes (the compiled train, eval and predict functions are cached until then).
    The host calls ``TrainingMixin.__init__`` before building anything.
    """

    name: str

    @property
    def inputs(self) -> list[Value]:
        """The model's ``gd.input`` values (builds a deferred model first)."""

    @property
    def output(self) -> Value:
        """The single output value (training form)."""

    @property
    def variables(self) -> list[Variable]:
        """Every Variable the outputs read (distributed training broadcasts them)."""

    def graph(self, training: bool = False) -> Graph:
        """The inference graph, or with ``training=True`` the forward graph with its state
        updates."""

    def train_step_graph(self, loss: Any, optimizer: Any, forward_hook: Any = None,
                         grad_hook: Any = None, precision: str = "float32") -> Graph:
        """One graph for a train step: inputs (model inputs, targets), outputs (loss, output),
        updates (parameters, optimizer and layer state); the hooks rewrite the forward graph
        and map the gradients (the data-parallel step uses them); ``precision`` is "float32"
        or "mixed"."""

    def eval_graph(self, loss: Any) -> Graph:
        """The inference graph with the targets as an extra input: outputs (loss, output)."""

    def _ensure_built(self, sample_shape: Sequence[int] | None = None) -> None:
        """Build the graph from one sample's shape if it is deferred (``Sequential``)."""


class TrainingMixin:
    """compile/fit/evaluate/predict for :class:`graphdl.Model` (see the module docstring);
    the class it is mixed into implements :class:`TrainableModel`."""

    def __init__(self):
        self.stop_training = False
        self.history: History | None = None
        self.optimizer: _optim.Optimizer | None = None
        self.loss: _losses.Loss | None = None
        self.metrics: list[tuple[str, Callable]] = []
        self.backend = "numpy"
        self.precision = "float32"
        self._ort_options: dict[str, Any] = {}
        self._device_state = None
        self.distributed = None  # a graphdl.distributed.DataParallel when compiled with one
        self._reset_compiled_functions()

    def _reset_compiled_functions(self) -> None:
        self._train_fn = None
        self._eval_fn = None
        self._predict_fn = None
        state = getattr(self, "_device_state", None)
        if state is not None:  # hand the state back to the host before the sessions go
            state.release()
            self._device_state = None

    def sync_weights(self) -> None:
        """Copy state kept on a device (``backend="onnxruntime"``) back into the Variables.

        Not needed for correctness: reading a Variable's ``value`` (``get_weights``, ``save``,
        callbacks, another backend) copies it back lazily. ``fit`` calls this when it ends.
        """
        if self._device_state is not None:
            self._device_state.sync()

    def _ensure_built(self, sample_shape=None) -> None:
        """Functional models are always built; Sequential overrides this."""

    def compile(self, optimizer: Any = "adam", loss: Any = None,
                metrics: Sequence[str | Callable] | None = None, distributed: Any = None,
                backend: str = "numpy", providers: Any = "auto", precision: str = "float32",
                threads: int | None = None, inplace_update: bool = False) -> None:
        """Choose the optimizer (an optimizer or "sgd"/"adam"/"adamw"), the loss (a name such
        as "cross_entropy", a Loss, or ``fn(outputs, targets)``) and host-side metrics
        ("accuracy", "mae", "mse" or ``fn(outputs, y) -> per-sample values``).

        ``distributed="mpi"`` (or a :class:`graphdl.distributed.DataParallel` with options:
        bucket size, synchronized BatchNorm, timeout) trains data-parallel over the ranks of
        ``mpiexec -n K``; ``fit``'s batch size is then per rank.

        ``backend="onnxruntime"`` runs fit/evaluate/predict on ONNX Runtime (``providers``:
        "auto", "cpu", "cuda"; ``threads``: intra-op threads) with the whole state kept in
        device buffers between steps (see :meth:`sync_weights`). ``precision="mixed"``
        computes convolutions and matrix products in float16 (bfloat16 where the provider
        prefers it) with float32 master weights and dynamic loss scaling in the graph.
        ``inplace_update=True`` (ONNX Runtime) writes each step's new weights and moments over
        the old ones instead of into second buffers (half the state buffers; the optimizer's
        elementwise tail runs twice, once for the NaN guard); a step with a non-finite loss
        or update is then skipped inside the graph.
        """
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='cross_entropy'")
        if backend not in ("numpy", "onnxruntime"):
            raise ValueError(f"backend={backend!r}: use 'numpy' or 'onnxruntime'")
        if precision not in ("float32", "mixed"):
            raise ValueError(f"precision={precision!r}: use 'float32' or 'mixed'")
        opt, loss_obj = _optim.get(optimizer), _losses.get(loss)
        chosen = [_metric(m, loss_obj) for m in (metrics or [])]
        if backend == "onnxruntime":
            from graphdl.backends.ort import resolve_providers  # lazy: onnxruntime loads slowly

            resolve_providers(providers)  # a clear error now, not at the first fit
        if inplace_update and (backend != "onnxruntime" or distributed is not None):
            raise ValueError("inplace_update=True needs backend='onnxruntime' (the NumPy "
                             "executor has no second buffers) and no distributed= (a step "
                             "another rank rejects could not be undone on this one)")
        if distributed is not None:
            distributed = DataParallel.of(distributed)
        self._reset_compiled_functions()
        self.optimizer, self.loss, self.metrics = opt, loss_obj, chosen
        self.distributed = distributed
        self.backend, self.precision = backend, precision
        self._ort_options = {"providers": providers, "threads": threads,
                             **({"inplace_update": True} if inplace_update else {})}

    # ---- compiled functions --------------------------------------------------------------

    def _compile_graph(self, g, training: bool):
        if self.backend != "onnxruntime":
            return function(g.inputs, list(g.outputs), g.updates, training=training)
        from graphdl.backends.ort_train import OrtFunction, pipeline_for  # lazy: slow import

        pipeline = pipeline_for(self._ort_options["providers"], training=training)
        graph, report = _passes.optimize_graph(g, training=training, passes=pipeline)
        # the loss (output 0) gates an in-place step too: a NaN loss keeps the weights
        fn = OrtFunction(graph, state=self._device_state, report=report,
                         check_outputs=(0,) if g.updates else (), **self._ort_options)
        self._device_state = fn.state  # train, eval and predict share the device buffers
        return fn

    def _ort_half(self, graph):
        """An ONNX Runtime session for one half of a split step (already optimized)."""
        from graphdl.backends.ort_train import OrtFunction  # lazy: onnxruntime loads slowly

        fn = OrtFunction(graph, state=self._device_state, **self._ort_options)
        self._device_state = fn.state  # both halves, eval and predict share the buffers
        return fn

    def _train_function(self):
        if self._train_fn is None and self.distributed is not None:
            # on ONNX Runtime: a gradient session and an apply session sharing the device
            # state, with the all-reduce between them on host buffers (graphdl.split_step)
            onnxruntime = getattr(self, "backend", "numpy") == "onnxruntime"
            self._train_fn = self.distributed.compile_train_step(
                self, self.loss, self.optimizer, self._ort_half if onnxruntime else None,
                precision=getattr(self, "precision", "float32"))
        if self._train_fn is None:
            g = self.train_step_graph(self.loss, self.optimizer, precision=self.precision)
            self._train_fn = self._compile_graph(g, training=True)
        return self._train_fn

    def _eval_function(self, loss):
        if self._eval_fn is None or self._eval_fn[0] is not loss:
            self._eval_fn = (loss, self._compile_graph(self.eval_graph(loss), training=False))
        return self._eval_fn[1]

    def _predict_function(self):
        if self._predict_fn is None:
            self._predict_fn = self._compile_graph(self.graph(training=False), training=False)
        return self._predict_fn

    # ---- the loop ------------------------------------------------------------------------

    def fit(self, x: Any, y: Any, epochs: int = 1, batch_size: int = 32,
            validation_data: tuple | None = None, validation_split: float = 0.0,
            shuffle: bool = True, seed: int = 0, verbose: int = 1,
            callbacks: Sequence[Callback] | None = None, console=None) -> History:
        """Train for ``epochs`` passes over (``x``, ``y``) in shuffled mini-batches.

        ``seed`` fixes the shuffling; ``validation_data=(x_val, y_val)`` (or
        ``validation_split``, the last fraction of the data, taken before shuffling) is
        evaluated after each epoch in inference mode. Returns a :class:`History`; progress is
        shown with a rich bar (``verbose=0`` silences it, ``2`` prints one line per epoch).

        ``x`` must be batch-first with the model input's shape. Floating-point ``x`` of another
        precision (float64 from NumPy or scikit-learn) is converted to the model's dtype, as
        Keras does; integer or bool ``x`` is refused (scale it yourself). All data checks run
        before the first step. A step whose loss (or any updated value) is NaN/Inf raises
        :class:`NonFiniteLossError` naming the epoch and batch, with every variable left as it
        was before that step.
        """
        self._require_compiled("fit")
        epochs, batch_size = _positive_int("epochs", epochs, 0), _positive_int(
            "batch_size", batch_size, 1)
        xs, targets = self._prepare(x, y, "x", "y")
        val = None
        if validation_split and validation_data is None:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split must lie in (0, 1), got {validation_split}")
            n_val = int(round(len(targets) * validation_split))
            if n_val < 1 or n_val >= len(targets):
                raise ValueError(f"validation_split={validation_split} leaves no data for "
                                 f"training or validation ({len(targets)} samples)")
            val = ([a[-n_val:] for a in xs], targets[-n_val:])  # already checked
            xs, targets = [a[:-n_val] for a in xs], targets[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            val = self._prepare(validation_data[0], validation_data[1],
                                "validation x", "validation y")
        step = self._train_function()
        dp = self.distributed
        n = len(targets)
        if dp is not None:
            broadcast_variables(self.variables, dp.comm)  # every rank starts from rank 0's
            verbose = verbose if dp.rank == 0 else 0  # one progress bar for the job
            n = len(dp.shard(n, batch_size, np.arange(n)))
        steps = -(-n // batch_size)
        names = ["loss"] + [name for name, _ in self.metrics]
        history = History()
        cbs = [history] + list(callbacks or [])
        params = {"epochs": epochs, "steps": steps, "samples": n, "verbose": verbose,
                  "metrics": names + ([f"val_{k}" for k in names] if val else [])}
        for cb in cbs:
            cb.set_model(self)
            cb.set_params(params)
        progress = FitProgress(verbose, epochs, steps, console)
        rng = np.random.default_rng(seed)
        self.stop_training = False
        self.history = history
        try:
            for cb in cbs:
                cb.on_train_begin({})
            for epoch in range(epochs):
                for cb in cbs:
                    cb.on_epoch_begin(epoch, {})
                order = rng.permutation(len(targets)) if shuffle else None
                if dp is not None:  # this rank's shard of the epoch (same seed on every rank)
                    order = dp.shard(len(targets), batch_size, np.arange(len(targets))
                                     if order is None else order)
                progress.start_epoch(epoch)
                logs, seconds = self._run_epoch(step, xs, targets, order, batch_size, epoch,
                                                epochs, cbs, progress)
                if val is not None:
                    val_logs = self._evaluate_arrays(val[0], val[1], batch_size, self.loss)
                    logs.update({f"val_{k}": v for k, v in val_logs.items()})
                history.epoch_seconds.append(seconds)
                progress.end_epoch(epoch, logs, seconds, n)
                for cb in cbs:
                    cb.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            for cb in cbs:
                cb.on_train_end({})
        except NonFiniteLossError:
            raise  # raised on every rank at the same step (the flag is all-reduced)
        except Exception as err:
            if dp is not None:
                dp.abort(err)  # a failure on one rank would leave the others waiting
            raise
        finally:
            progress.close()
            self.sync_weights()
        return history

    def _run_epoch(self, step, xs, targets, order, batch_size, epoch, epochs, cbs, progress):
        n = len(targets) if order is None else len(order)
        dp = self.distributed
        steps = -(-n // batch_size)
        sums = {"loss": 0.0, **{name: 0.0 for name, _ in self.metrics}}
        seen = 0
        seconds = 0.0

        def batches():
            for b in range(steps):
                idx = slice(b * batch_size, (b + 1) * batch_size) if order is None else \
                    order[b * batch_size:(b + 1) * batch_size]
                yield [a[idx] for a in xs] + [targets[idx]]

        staged = _staged_batches(step, batches())
        for b, (args, ready) in enumerate(staged):
            yb = args[-1]
            start = time.perf_counter()
            outs, new_state = step.run_staged(ready) if ready is not None else \
                step.run_uncommitted(*args)
            loss = float(outs[0])
            bad = None if np.isfinite(loss) else f"the loss became {loss}"
            if bad is None:  # a step may check its own pending state (a split step does)
                bad = getattr(step, "non_finite", _non_finite_update)(new_state)
            size = len(yb)
            batch_sums = [loss * size] + [float(np.sum(fn(outs[1], yb)))
                                          for _, fn in self.metrics]
            if dp is not None:  # one small collective: metric sums, sizes and the NaN flag
                total = dp.allreduce_host(batch_sums + [size, bad is not None])
                batch_sums, size, n_bad = list(total[:-2]), int(total[-2]), int(total[-1])
                loss = batch_sums[0] / size
                if n_bad and bad is None:
                    bad = f"a non-finite value on {n_bad} other rank(s)"
            if bad is not None:
                raise NonFiniteLossError(
                    f"{bad} at epoch {epoch + 1}/{epochs}, batch {b + 1}/{steps} (step "
                    f"{self.optimizer.iterations + 1}); training stopped and the weights from "
                    "before this step are kept. Try a lower learning rate, or check the data "
                    "for extreme values.")
            step.commit(new_state)
            seconds += time.perf_counter() - start
            seen += size
            for name, value in zip(sums, batch_sums):
                sums[name] += value
            running = {k: v / seen for k, v in sums.items()}
            progress.update(b, seen, running)
            for cb in cbs:
                cb.on_train_batch_end(b, {"loss": loss, "size": size})
        return {k: v / max(seen, 1) for k, v in sums.items()}, seconds

    def evaluate(self, x: Any, y: Any, batch_size: int = 128, return_dict: bool = False,
                 verbose: int = 0):
        """Loss and metrics on (``x``, ``y``) in inference mode: the loss alone when there are
        no metrics, else ``[loss, *metrics]`` (or a dict with ``return_dict=True``)."""
        self._require_compiled("evaluate")
        xs, targets = self._prepare(x, y, "x", "y")
        logs = self._evaluate_arrays(xs, targets, _positive_int("batch_size", batch_size, 1),
                                     self.loss)
        if verbose:
            print("  ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _evaluate_arrays(self, xs, targets, batch_size, loss) -> dict[str, float]:
        if self.distributed is not None:  # shards evaluated per rank, sums all-reduced
            return self.distributed.evaluate(self, xs, targets, batch_size, loss)
        fn = self._eval_function(loss)
        sums = {"loss": 0.0, **{name: 0.0 for name, _ in self.metrics}}
        n = len(targets)
        for start in range(0, n, batch_size):
            idx = slice(start, start + batch_size)
            yb = targets[idx]
            loss_value, out = fn(*[a[idx] for a in xs], yb)
            sums["loss"] += float(loss_value) * len(yb)
            for name, metric in self.metrics:
                sums[name] += float(np.sum(metric(out, yb)))
        return {k: v / n for k, v in sums.items()}

    def predict(self, x: Any, batch_size: int = 128, verbose: int = 0):
        """Model outputs for ``x`` in inference mode, computed in batches (one array, or a
        list for multi-output models)."""
        xs = self._prepare_inputs(x, "x")
        fn = self._predict_function()
        batch_size = _positive_int("batch_size", batch_size, 1)
        n = len(xs[0])
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, batch_size):
            chunks.append(fn(*[a[start:start + batch_size] for a in xs]))
        outs = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        if verbose:
            print(f"predicted {n} samples")
        return outs[0] if len(outs) == 1 else outs

    # ---- input checks --------------------------------------------------------------------

    def _require_compiled(self, what: str) -> None:
        if self.loss is None:
            raise GraphError(f"call model.compile(optimizer=..., loss=...) before {what}()")

    def _prepare(self, x, y, x_name: str, y_name: str):
        xs = self._prepare_inputs(x, x_name)
        if y is None:
            raise ValueError(f"{y_name} is missing: fit/evaluate need targets")
        y_arr = np.asarray(y)
        if y_arr.ndim == 0 or len(y_arr) != len(xs[0]):
            got = "a scalar" if y_arr.ndim == 0 else f"{len(y_arr)} targets"
            raise ValueError(f"{x_name} has {len(xs[0])} samples but {y_name} has {got}; they "
                             "must have the same length")
        return xs, self.loss.check_targets(y_arr, self.output)

    def _prepare_inputs(self, x, x_name: str) -> list[np.ndarray]:
        multi = isinstance(x, (list, tuple)) and len(getattr(self, "_inputs", None) or ()) > 1
        arrays = [np.asarray(a) for a in (x if multi else [x])]
        self._ensure_built(arrays[0].shape[1:] if arrays[0].ndim >= 1 else None)
        inputs = self.inputs
        if len(arrays) != len(inputs):
            raise ValueError(f"the model takes {len(inputs)} input(s) "
                             f"{[v.name for v in inputs]}, got {len(arrays)} array(s)")
        out = []
        for a, inp in zip(arrays, inputs):
            label = x_name if len(inputs) == 1 else f"{x_name} for input {inp.name!r}"
            out.append(_check_input_array(a, inp, label))
        sizes = {len(a) for a in out}
        if len(sizes) != 1:
            raise ValueError(f"the input arrays have different numbers of samples {sorted(sizes)}")
        return out


def _check_input_array(a: np.ndarray, inp, label: str) -> np.ndarray:
    want = tuple("N" if isinstance(d, str) else d for d in inp.shape)
    shown = "(" + ", ".join("N" if isinstance(d, str) else str(d) for d in inp.shape) + ")"
    if a.ndim == 0:
        raise ValueError(f"{label} is a scalar; the model input {inp.name!r} expects {shown}")
    if len(a) == 0:
        raise ValueError(f"{label} is empty (0 samples); there is nothing to train on")
    if a.ndim != len(want) or any(isinstance(d, int) and d != s for d, s in zip(want, a.shape)):
        hint = ""
        static = want[1:]
        if all(isinstance(d, int) for d in static) and \
                int(np.prod(static)) == int(np.prod(a.shape[1:])):
            hint = f"; reshape it with {label.split()[0]}.reshape(-1, " \
                   f"{', '.join(map(str, static))})"
        raise ValueError(f"{label} has shape {a.shape}; the model input {inp.name!r} expects "
                         f"{shown} (N = batch){hint}")
    if inp.dtype.startswith("float"):
        if a.dtype.kind in "iub":
            raise ValueError(f"{label} has dtype {a.dtype}, the model takes {inp.dtype}; "
                             "graphdl does not guess how to scale integer data: convert it, "
                             f"e.g. x.astype(np.{inp.dtype}) / 255 for 8-bit images")
        if a.dtype.kind != "f":
            raise ValueError(f"{label} has dtype {a.dtype}; the model takes {inp.dtype}")
        a = a.astype(inp.dtype, copy=False)
        if not np.isfinite(a).all():
            first = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))[0])
            raise ValueError(f"{label} contains NaN or Inf (first at sample {first})")
    else:
        if a.dtype.kind not in "iu":
            raise ValueError(f"{label} has dtype {a.dtype}; the model input {inp.name!r} takes "
                             f"{inp.dtype}")
        a = a.astype(inp.dtype, copy=False)
    return a


def _staged_batches(step, batches):
    """(args, staged) per batch: staged by a helper thread one batch ahead when the step can
    stage inputs (ONNX Runtime), else (args, None)."""
    if hasattr(step, "stage"):
        from graphdl.backends.ort_train import Prefetcher  # lazy: onnxruntime loads slowly

        return Prefetcher(step, batches)
    return ((args, None) for args in batches)


def _non_finite_update(pairs) -> str | None:
    floats = [(var, value) for var, value in pairs if value.dtype.kind == "f"]
    # one reduction per array (no temporaries); a NaN/Inf anywhere makes its sum non-finite
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(sum(float(value.sum()) for _, value in floats)):
            return None
    for var, value in floats:
        if not np.isfinite(value).all():
            return f"the update of {var.name!r} became non-finite"
    return None


def _positive_int(name: str, value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return int(value)


def _metric(spec: str | Callable, loss: _losses.Loss) -> tuple[str, Callable]:
    """(name, fn(outputs, y) -> per-sample values) for a metric name or function."""
    if callable(spec):
        return getattr(spec, "__name__", "metric"), spec
    key = str(spec).lower()
    if key in ("accuracy", "acc"):
        if loss.targets == "values":
            raise ValueError(f"metric 'accuracy' needs a classification loss; loss "
                             f"{loss.name!r} is a regression loss (use 'mae' or 'mse')")
        return "accuracy", loss.accuracy
    if key in ("mae", "mean_absolute_error"):
        return "mae", lambda out, y: np.abs(out - y).reshape(len(y), -1).mean(axis=1)
    if key in ("mse", "mean_squared_error"):
        return "mse", lambda out, y: np.square(out - y).reshape(len(y), -1).mean(axis=1)
    raise ValueError(f"unknown metric {spec!r}; use 'accuracy', 'mae', 'mse' or a function "
                     "fn(outputs, y) -> per-sample values")
