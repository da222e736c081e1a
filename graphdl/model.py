"""``gd.Model`` and ``gd.Sequential``: a graph with named inputs, outputs and state.

A model is a view over the graph its layers built: its variables are the Params the outputs
reach, its inference form flips BatchNorm/Dropout to inference mode, and its train step is one
graph (forward, loss, gradients, optimizer and BatchNorm updates). The Keras-style loop
(``compile``/``fit``/``evaluate``/``predict``) lives in :mod:`graphdl.training`; the summary
table in :mod:`graphdl.summary`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from graphdl import autodiff, compiler, losses as _losses, optim as _optim
from graphdl.amp import LossScaler
from graphdl.ir import INPUT, Graph, GraphError, Value, Variable
from graphdl.model_io import (  # noqa: F401  (re-exported)
    ModelFileError, WeightsMismatchError, load_weights, model_arrays, save_weights)
from graphdl.modes import set_training, state_updates
from graphdl.passes.mixed_precision import autocast
from graphdl.summary import print_summary
from graphdl.tensor import input as gd_input
from graphdl.training import TrainingMixin


class Model(TrainingMixin):
    """A model over graph values: ``gd.Model(inputs, outputs, name=None)``.

    It implements :class:`graphdl.training.TrainableModel`, the interface its training loop
    (:class:`graphdl.training.TrainingMixin`) relies on.

    ``inputs`` are ``gd.input`` values and ``outputs`` the values computed from them (one value
    or a list of each). Layers build the training form of the graph; :meth:`graph` gives the
    inference form.
    """

    def __init__(self, inputs: Value | Sequence[Value], outputs: Value | Sequence[Value],
                 name: str | None = None):
        super().__init__()
        self.name = name or "model"
        self._set_graph(_as_list(inputs, "inputs"), _as_list(outputs, "outputs"))

    def _set_graph(self, inputs: list[Value], outputs: list[Value]) -> None:
        for v in inputs:
            if v.node.op != INPUT:
                raise GraphError(f"Model inputs must be gd.input() values; got {v!r}")
        names = [v.name for v in inputs]
        if len(set(names)) != len(names):
            raise GraphError(f"Model inputs need distinct names, got {names}")
        self._inputs = inputs
        self._outputs = outputs
        self._graph = Graph(inputs, outputs, name=self.name)  # checks every input is fed
        self._reset_compiled_functions()

    # ---- structure -----------------------------------------------------------------------

    @property
    def inputs(self) -> list[Value]:
        """The model's ``gd.input`` values."""
        return list(self._inputs)

    @property
    def outputs(self) -> list[Value]:
        """The model's output values (training form, as the layers built them)."""
        return list(self._outputs)

    @property
    def input(self) -> Value:
        """The single input (errors for multi-input models)."""
        return _single(self.inputs, "input")

    @property
    def output(self) -> Value:
        """The single output (errors for multi-output models)."""
        return _single(self.outputs, "output")

    @property
    def dtype(self) -> str:
        """The dtype of the (first) input."""
        return self.inputs[0].dtype

    @property
    def variables(self) -> list[Variable]:
        """Every Variable the outputs read (parameters and state), in schedule order."""
        seen: dict[int, Variable] = {}
        for node in self._graph.params:
            var = node.attrs["variable"]
            seen.setdefault(id(var), var)
        return list(seen.values())

    @property
    def trainable_variables(self) -> list[Variable]:
        """The Variables gradients update."""
        return [v for v in self.variables if v.trainable]

    @property
    def state_variables(self) -> list[Variable]:
        """Non-trainable Variables (BatchNorm running statistics, RNG seeds)."""
        return [v for v in self.variables if not v.trainable]

    def num_params(self, trainable_only: bool = True) -> int:
        """Number of parameters; by default trainable ones only (torch's count), with
        ``trainable_only=False`` also BatchNorm statistics and other state."""
        chosen = self.trainable_variables if trainable_only else self.variables
        return int(sum(v.value.size for v in chosen))

    def graph(self, training: bool = False) -> Graph:
        """The model as a Graph: inference form (no updates) by default; ``training=True``
        gives the training form, whose updates carry BatchNorm/Dropout state."""
        self._ensure_built()
        g = set_training(self._graph, training)
        if not training:
            return g
        return Graph(g.inputs, g.outputs, state_updates(list(g.outputs)), name=self.name)

    def train_step_graph(self, loss: Any, optimizer: Any,
                         forward_hook: Callable[[Graph], Graph] | None = None,
                         grad_hook: Callable[[list], list] | None = None,
                         precision: str = "float32") -> Graph:
        """One graph for a whole train step.

        Inputs: the model inputs and the targets ``y``; outputs: the scalar loss and the model
        output; updates: parameters and optimizer state (from ``optimizer``), BatchNorm
        statistics. ``loss`` is a name, a :class:`graphdl.losses.Loss` or a function.
        ``forward_hook`` rewrites the training-form forward graph before differentiation and
        ``grad_hook`` maps the parameter gradients before the optimizer reads them (the
        data-parallel step uses both: synchronized BatchNorm, gradient all-reduces).
        ``precision="mixed"``: convolutions and matrix products in float16 over float32
        master weights, with dynamic loss scaling that skips overflowing steps in the graph
        (:mod:`graphdl.amp`; its state is ``model.loss_scaler``).
        """
        loss_obj = _losses.get(loss)
        opt = _optim.get(optimizer)
        forward = self.graph(training=True)
        if forward_hook is not None:
            forward = forward_hook(forward)
        scaler = None
        if precision == "mixed":
            forward = autocast(forward)
            if getattr(self, "loss_scaler", None) is None:
                self.loss_scaler = LossScaler()
            scaler = self.loss_scaler
        elif precision != "float32":
            raise ValueError(f"precision={precision!r}: use 'float32' or 'mixed'")
        out = _single(list(forward.outputs), "output",
                      "; build multi-output train steps with gd.grad and gd.function")
        targets = self.target_input(loss_obj)
        loss_value = loss_obj(out, targets)
        if not isinstance(loss_value, Value) or loss_value.shape != ():
            raise GraphError(f"loss {loss_obj.name!r} must build a scalar graph value, got "
                             f"{loss_value!r}")
        # a Variable read through several Param nodes (a shared layer) sums their gradients
        groups: dict[int, list[Value]] = {}
        for node in forward.params:
            var = node.attrs["variable"]
            if var.trainable:
                groups.setdefault(id(var), []).append(node.outputs[0])
        reads = [v for vs in groups.values() for v in vs]
        seed = loss_value
        if scaler is not None:
            seed, scale = scaler.scaled(loss_value)
        grads = autodiff.grad(seed, reads) if reads else []
        if scaler is not None:
            grads = scaler.unscale(grads, scale)
        params, param_grads, i = [], [], 0
        for vs in groups.values():
            total = grads[i]
            for g in grads[i + 1:i + len(vs)]:
                total = total + g
            params.append(vs[0])
            param_grads.append(total)
            i += len(vs)
        if grad_hook is not None:
            param_grads = list(grad_hook(param_grads))
        updates = opt.updates(params, param_grads) + list(forward.updates)
        if scaler is not None and param_grads:
            updates = scaler.guard(updates, param_grads, scale)
        _check_unique_updates(updates)
        return Graph(list(forward.inputs) + [targets], [loss_value, out], updates,
                     name=f"{self.name}_train_step")

    def eval_graph(self, loss: Any) -> Graph:
        """Inference-form graph with the targets as an extra input: outputs (loss, output)."""
        loss_obj = _losses.get(loss)
        forward = self.graph(training=False)
        out = _single(list(forward.outputs), "output")
        targets = self.target_input(loss_obj)
        return Graph(list(forward.inputs) + [targets], [loss_obj(out, targets), out],
                     name=f"{self.name}_eval")

    def target_input(self, loss: Any):
        """A ``gd.input`` for the targets ``loss`` compares the output with (named ``y``)."""
        t = _losses.get(loss).target_type(self.output)
        taken = {v.name for v in self.inputs}
        name = next(n for n in ("y", "y_true", "targets", "_targets") if n not in taken)
        return gd_input(name, t.shape, t.dtype)

    # ---- weights -------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every variable's value, in :attr:`variables` order."""
        return [np.array(v.value, copy=True) for v in self.variables]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Set every variable from ``weights`` (in :attr:`variables` order, shapes checked)."""
        variables = self.variables
        if len(weights) != len(variables):
            raise WeightsMismatchError(f"set_weights got {len(weights)} arrays for "
                                       f"{len(variables)} variables")
        bad = [f"  - {v.name}: model {v.value.shape}, given {np.shape(w)}"
               for v, w in zip(variables, weights) if np.shape(w) != v.value.shape]
        if bad:
            raise WeightsMismatchError("set_weights: shapes do not match:\n" + "\n".join(bad))
        for v, w in zip(variables, weights):
            v.value = np.array(w, dtype=v.value.dtype, copy=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write every variable to an ``.npz`` file by name (no pickle), atomically: a crash
        mid-save leaves any previous file intact (see :mod:`graphdl.model_io`)."""
        save_weights(path, model_arrays(self.variables, self.name))

    def load(self, path: str | os.PathLike, allow_nonfinite: bool = False) -> None:
        """Read weights saved by :meth:`save`: all or nothing.

        Every array is read and checked (names, shapes, real dtypes, finite values unless
        ``allow_nonfinite=True``) before any variable changes; errors name the file and each
        missing, unexpected or mismatched array (:class:`WeightsMismatchError`,
        :class:`ModelFileError`).
        """
        variables = self.variables
        arrays = load_weights(path, {v.name: (v.value.shape, v.value.dtype.name)
                                     for v in variables},
                              allow_nonfinite=allow_nonfinite, what=f"model {self.name!r}")
        for var in variables:
            var.value = arrays[var.name]

    # ---- reports and export --------------------------------------------------------------

    def summary(self, print_fn: Callable[[str], Any] | None = None, console=None) -> None:
        """Print a table of layers: name, op, output shape and parameter count."""
        print_summary(self, print_fn=print_fn, console=console)

    def export_onnx(self, path: str | os.PathLike, **kwargs):
        """Export the inference graph to ONNX (see ``gd.export_onnx``)."""
        return compiler.export_onnx(self, path, **kwargs)

    def __repr__(self) -> str:
        ins = ", ".join(f"{v.name}: {v.type}" for v in self.inputs)
        outs = ", ".join(str(v.type) for v in self.outputs)
        return f"<{type(self).__name__} {self.name!r} ({ins}) -> {outs}, " \
               f"{self.num_params():,} params>"


class Sequential(Model):
    """Layers applied in order: ``gd.Sequential([L.Dense(64), L.ReLU(), L.Dense(10)],
    input_shape=(784,))``.

    ``input_shape`` excludes the batch dimension. Without it, the model is built from the first
    data it sees (``fit``/``evaluate``/``predict``) or by :meth:`build`.
    """

    def __init__(self, layers: Sequence[Callable] | None = None,
                 input_shape: Sequence[int] | None = None, name: str | None = None,
                 dtype: str = "float32"):
        TrainingMixin.__init__(self)
        self.name = name or "sequential"
        self.layers = list(layers or [])
        self._dtype = dtype
        self._graph = None
        if input_shape is not None:
            self.build(input_shape)

    @property
    def built(self) -> bool:
        """True once the graph exists (an input shape is known)."""
        return self._graph is not None

    def build(self, input_shape: Sequence[int]) -> None:
        """Create the input (batch dim symbolic) and apply every layer to it."""
        if not self.layers:
            raise GraphError(f"Sequential {self.name!r} has no layers")
        x = gd_input("x", (None, *tuple(int(d) for d in input_shape)), self._dtype)
        h = x
        for i, layer in enumerate(self.layers):
            if not callable(layer):
                raise GraphError(f"Sequential layer {i} ({layer!r}) is not callable")
            h = layer(h)
            if not isinstance(h, Value):
                raise GraphError(f"Sequential layer {i} ({layer!r}) returned "
                                 f"{type(h).__name__}, not a graph value")
        self._set_graph([x], [h])

    def add(self, layer: Callable) -> None:
        """Append a layer (rebuilding the graph if it was built)."""
        self.layers.append(layer)
        if self.built:
            self.build(tuple(self._inputs[0].shape[1:]))

    def _ensure_built(self, sample_shape: Sequence[int] | None = None) -> None:
        if self.built:
            return
        if sample_shape is None:
            raise GraphError(f"Sequential {self.name!r} is not built yet: pass input_shape=... "
                             "or call fit/predict with data first")
        self.build(sample_shape)

    @property
    def inputs(self) -> list[Value]:
        """The model's input (builds nothing; errors if not built)."""
        self._ensure_built()
        return list(self._inputs)

    @property
    def outputs(self) -> list[Value]:
        """The model's output (errors if not built)."""
        self._ensure_built()
        return list(self._outputs)

    @property
    def dtype(self) -> str:
        """The input dtype."""
        return self._dtype

    @property
    def variables(self) -> list[Variable]:
        """Every Variable the output reads (errors if not built)."""
        self._ensure_built()
        return Model.variables.fget(self)


def _as_list(values, what: str) -> list[Value]:
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if not items:
        raise GraphError(f"Model needs at least one value in {what}")
    for v in items:
        if not isinstance(v, Value):
            raise GraphError(f"Model {what} must be graph values, got {type(v).__name__}")
    return items


def _single(values: list[Value], kind: str, hint: str = "") -> Value:
    if len(values) != 1:
        raise GraphError(f"this model has {len(values)} {kind}s, expected one{hint}")
    return values[0]


def _check_unique_updates(updates) -> None:
    seen: dict[int, str] = {}
    for var, _ in updates:
        if id(var) in seen:
            raise GraphError(f"variable {var.name!r} is updated twice in one train step (is a "
                             "trainable parameter also a BatchNorm statistic?)")
        seen[id(var)] = var.name


def import_onnx(model_or_path: Any, name: str | None = None, budget: Any = None) -> Model:
    """An ONNX model (a path or a ``ModelProto``) as a :class:`Model` ready to fine-tune:
    float initializers are trainable Variables, BatchNorm running statistics are state,
    Dropout draws masks in training mode, and ``model.compile(...); model.fit(...)`` trains
    it with graphdl's symbolic gradients. Refusals raise ``OnnxImportError``. ``budget`` (a
    :class:`graphdl.ImportBudget`) raises the limits on evaluating constants at import."""
    from graphdl.backends.onnx_import import from_onnx  # lazy: onnx loads in ~0.7 s

    graph = from_onnx(model_or_path, name=name, budget=budget)
    return Model(list(graph.inputs), list(graph.outputs), name=graph.name)
