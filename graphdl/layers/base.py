"""The ``Layer`` base class: lazy building, owned state variables, names and seeds.

A layer is a callable from graph values to a graph value. It creates its Variables on the
first call, when the input type is known, and names them ``f"{layer.name}.{param}"`` with
torch's parameter names (``weight``, ``bias``, ``running_mean``, ...), so a state dict copies
1:1 into the equivalent torch module. The final node of every call carries the layer's name.

Default names are class-based and unique: ``dense``, ``dense_1``, ``dense_2``... Uniqueness
comes from a counter per base name, kept in the innermost :func:`name_scope` (a module-level
default scope exists, like Keras's session-wide name counters; this is the one piece of
module-level state in the layers package). ``with L.name_scope():`` starts fresh counters, so
code that builds a model twice in one process can get the same default names both times.
Explicit names are never changed; the zoo names every layer explicitly (torchvision names).

Initial weights are deterministic. A layer's generator is seeded with ``(seed, param)`` when a
``seed`` is given, and with ``(crc32(name), param)`` otherwise, so the same layer name gives the
same weights in every process, and different layers of one model get different weights.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Any, Iterator, Sequence

import numpy as np

from graphdl.ir import FLOAT_DTYPES, GraphError, Node, ShapeError, TensorType, Value, Variable, \
    normalize_dtype, user_call_site
from graphdl.layers import initializers
from graphdl.ops.registry import apply, get_op
from graphdl.tensor import variable_value

_SCOPES: list["_NameCounter"] = []


class _NameCounter:
    """Per-base-name counters plus every name already handed out in one scope."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        while True:
            n = self.counts.get(base, 0)
            self.counts[base] = n + 1
            name = base if n == 0 else f"{base}_{n}"
            if name not in self.used:
                self.used.add(name)
                return name


_SCOPES.append(_NameCounter())


@contextlib.contextmanager
def name_scope() -> Iterator[None]:
    """Fresh default-name counters inside the ``with`` block (the first Dense is ``dense``)."""
    _SCOPES.append(_NameCounter())
    try:
        yield
    finally:
        _SCOPES.pop()


def unique_name(base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not yet used in the current scope."""
    return _SCOPES[-1].fresh(base)


def derive_seed(seed: int, *keys: str) -> int:
    """A 32-bit seed mixed from ``seed`` and strings (stable across processes and runs)."""
    h = int(seed) & 0xFFFFFFFF
    for key in keys:
        h = zlib.crc32(key.encode(), h)
    return h


class Layer:
    """Base class: a callable ``Value -> Value`` that owns named state variables.

    Subclasses implement ``build(types)`` (create variables with ``add_variable``; called once,
    on the first call) and ``forward(*values)`` (build the nodes of one call). Layers that take
    several inputs (``Add``, ``Concatenate``) set ``multi_input = True`` and are called with a
    list.
    """

    default_name = "layer"
    multi_input = False

    def __init__(self, name: str | None = None, seed: int | None = None,
                 dtype: Any = None) -> None:
        if name is None:
            name = unique_name(self.default_name)
        elif not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, "
                             f"got {name!r}")
        else:
            _SCOPES[-1].used.add(name)
        self.name = name
        self.seed = None if seed is None else int(seed)
        self.dtype = None if dtype is None else normalize_dtype(dtype)
        self.built = False
        self.input_types: tuple[TensorType, ...] = ()
        self.output_type: TensorType | None = None
        self._variables: dict[str, Variable] = {}
        self._values: dict[str, Value] = {}

    # ---- state -------------------------------------------------------------------------------

    @property
    def variables(self) -> list[Variable]:
        """Every Variable this layer owns (parameters and running statistics), in build order."""
        return list(self._variables.values())

    @property
    def trainable_variables(self) -> list[Variable]:
        """The Variables gradients update."""
        return [v for v in self._variables.values() if v.trainable]

    def num_params(self, trainable_only: bool = True) -> int:
        """Number of scalars in the (trainable) variables; 0 before the first call."""
        vs = self.trainable_variables if trainable_only else self.variables
        return int(sum(v.value.size for v in vs))

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the variables' values keyed by the short parameter name (``weight``...)."""
        return {k: v.value.copy() for k, v in self._variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite variables by short name; shapes must match (dtype is converted)."""
        self._require_built("set_weights")
        for key, arr in weights.items():
            if key not in self._variables:
                raise KeyError(f"{self._label()} has no variable {key!r}; it has "
                               f"{sorted(self._variables)}")
            var = self._variables[key]
            arr = np.asarray(arr)
            if arr.shape != var.value.shape:
                raise ShapeError(f"{self._label()}: {key} has shape {var.value.shape}, got "
                                 f"{arr.shape}")
            var.value = arr.astype(var.value.dtype, copy=True)

    def add_variable(self, param: str, shape: Sequence[int], init: Any, dtype: str,
                     trainable: bool = True, fans: tuple[int, int] | None = None) -> Value:
        """Create the Variable ``f"{name}.{param}"`` with initial values from ``init``."""
        shape = tuple(int(d) for d in shape)
        fan_in, fan_out = fans if fans is not None else initializers.default_fans(shape)
        base = self.seed if self.seed is not None else zlib.crc32(self.name.encode())
        rng = np.random.default_rng([base & 0xFFFFFFFF, zlib.crc32(param.encode())])
        value = np.asarray(initializers.get(init)(shape, fan_in, fan_out, rng))
        if value.shape != shape:
            raise ShapeError(f"{self._label()}: initializer for {param} returned shape "
                             f"{value.shape}, expected {shape}")
        var = Variable(f"{self.name}.{param}", value.astype(dtype), trainable)
        self._variables[param] = var
        self._values[param] = variable_value(var)
        return self._values[param]

    def add_state(self, param: str, value: np.ndarray) -> Value:
        """Create a non-trainable Variable with a given initial value (e.g. an RNG seed)."""
        var = Variable(f"{self.name}.{param}", np.array(value), trainable=False)
        self._variables[param] = var
        self._values[param] = variable_value(var)
        return self._values[param]

    def value(self, param: str) -> Value:
        """The graph value (a Param node) that reads variable ``param``."""
        return self._values[param]

    # ---- calling -----------------------------------------------------------------------------

    def build(self, types: Sequence[TensorType]) -> None:
        """Create the variables for inputs of ``types`` (default: none)."""

    def forward(self, *xs: Value) -> Value:
        """Build one call's nodes; subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, inputs: Value | Sequence[Value]) -> Value:
        xs = self._check_inputs(inputs)
        types = tuple(x.type for x in xs)
        try:
            if not self.built:
                self.build(types)
                self.built = True
            out = self.forward(*xs)
        except ShapeError as err:
            raise ShapeError(self._prefix(types, str(err))) from None
        out = name_output(out, self.name, xs)
        self.input_types, self.output_type = types, out.type
        return out

    def _check_inputs(self, inputs) -> list[Value]:
        if self.multi_input:
            if isinstance(inputs, Value) or not isinstance(inputs, (list, tuple)) or not inputs:
                raise TypeError(f"{self._label()} takes a non-empty list of graph values")
            xs = list(inputs)
        else:
            xs = [inputs]
        for x in xs:
            if not isinstance(x, Value):
                raise TypeError(f"{self._label()} takes graph values (from gd.input or other "
                                f"layers), got {type(x).__name__} at {user_call_site()}")
        return xs

    # ---- helpers for subclasses --------------------------------------------------------------

    def param_dtype(self, t: TensorType) -> str:
        """The dtype for new variables: the layer's ``dtype``, else the input's float dtype."""
        if self.dtype is not None:
            return self.dtype
        if t.dtype not in FLOAT_DTYPES:
            raise self.error(f"expects a floating-point input, got {t.dtype} (cast it with "
                             ".astype('float32'))")
        return t.dtype

    def error(self, message: str) -> ShapeError:
        """A ShapeError naming this layer; the call site is added by ``__call__``."""
        return ShapeError(message)

    def check_rank(self, t: TensorType, ranks: Sequence[int], layout: str) -> None:
        """Raise unless the input's rank is one of ``ranks`` (``layout`` names the dims)."""
        if t.rank not in ranks:
            raise self.error(f"expects input of rank {' or '.join(map(str, ranks))} "
                             f"({layout}), got rank {t.rank}")

    def static_dim(self, t: TensorType, axis: int, what: str) -> int:
        """The input's static size along ``axis``; raise if it is symbolic."""
        d = t.shape[axis]
        if not isinstance(d, int):
            raise self.error(f"needs a static {what} dimension, got {d!r}")
        return d

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise GraphError(f"{self._label()}: {what} before the first call (layers create "
                             "their variables when first called on an input)")

    def _label(self) -> str:
        return f"{type(self).__name__} layer {self.name!r}"

    def _prefix(self, types: Sequence[TensorType], message: str) -> str:
        shown = ", ".join(map(str, types))
        if "\n  at " not in message:
            message += f"\n  at {user_call_site()}"
        return f"{self._label()} (input {shown}): {message}"

    def __repr__(self) -> str:
        state = f"{self.num_params()} params" if self.built else "not built"
        return f"<{type(self).__name__} {self.name!r}: {state}>"


def name_output(value: Value, name: str, inputs: Sequence[Value] = ()) -> Value:
    """``value`` produced by a node named ``name``.

    A node built during this call is recreated with the name (nodes are immutable and nothing
    else refers to a node that was just built); an input or a source value passes through an
    Identity node that carries the name instead.
    """
    if not isinstance(value, Value):
        raise TypeError(f"layer {name!r} produced {type(value).__name__}, not a graph value")
    node = value.node
    if node.name == name:
        return value
    if get_op(node.op).source or any(node is x.node for x in inputs):
        return apply("Identity", value, name=name)
    renamed = Node(node.op, node.inputs, node.attrs, node.types, name, node.site)
    return renamed.outputs[value.index]

