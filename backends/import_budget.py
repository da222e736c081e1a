"""Budgets on import-time evaluation: what folding constants may cost.

The importer evaluates a node whose inputs are all constants (shape arithmetic through
:mod:`graphdl.backends.onnx_import_shapes`, everything else through graphdl's own rules and
kernels). A model file is untrusted, so each evaluation runs under an :class:`ImportBudget`:

- sizes are checked **before** anything is allocated: ``ConstantOfShape``, ``Range``,
  ``Expand``, ``Tile``, ``OneHot``, ``Pad``, ``Resize``, ``Gather`` and broadcasting ops are
  estimated from their declared inputs, and every node a rule builds is typed (static
  shapes) before the NumPy executor runs it;
- a result over ``max_fold_bytes`` is not folded: an op graphdl can run becomes a runtime
  node (computed when the model runs, never at import), and one it cannot is refused with an
  error naming the node and the budget;
- ``Loop`` trip counts and ``Scan`` lengths are checked against ``max_loop_iterations``
  before a first iteration (graphdl has no Loop/Scan rule today, so they are refused as
  unsupported ops before any evaluation); every fold counts toward ``max_steps``, all folded
  results toward ``max_total_bytes``, and folding time toward ``max_seconds`` (checked
  between folds: one fold is bounded by the size cap).

Raise the budgets explicitly: ``gd.import_onnx(path, budget=gd.ImportBudget(...))``
or ``graphdl optimize IN -o OUT --import-budget fold_mb=64,steps=1e6,seconds=60``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from graphdl import tensor as F
from graphdl.ir import numpy_dtype

# onnx is imported where it is used, so ``gd.ImportBudget`` costs nothing to import
if TYPE_CHECKING:
    import onnx


@dataclasses.dataclass(frozen=True)
class ImportBudget:
    """Limits on evaluating constant nodes during ONNX import (see the module docstring)."""

    max_fold_bytes: int = 16 << 20   # one folded result (weights folded at import fit)
    max_total_bytes: int = 1 << 30   # all folded results of one import together
    max_loop_iterations: int = 10_000  # one Loop's trip count, one Scan's length
    max_steps: int = 200_000         # ops run inside folds (subgraph bodies included)
    max_seconds: float = 10.0        # wall time spent folding, for the whole import

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ImportBudget.{f.name} must be a number >= 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> "ImportBudget":
        """From ``"fold_mb=64,total_mb=4096,loop=1e5,steps=1e7,seconds=120"`` (CLI form)."""
        keys = {"fold_mb": ("max_fold_bytes", 1 << 20), "total_mb": ("max_total_bytes", 1 << 20),
                "loop": ("max_loop_iterations", 1), "steps": ("max_steps", 1),
                "seconds": ("max_seconds", None)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            if key not in keys or not raw:
                raise ValueError(f"import budget {part!r}: use key=value with keys "
                                 f"{', '.join(keys)}")
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"import budget {part!r}: {raw!r} is not a number") from None
            field, scale = keys[key]
            values[field] = number if scale is None else int(number * scale)
        return cls(**values)


class BudgetExceeded(Exception):
    """A fold would pass the budget; ``reason`` says which limit and by how much."""

    def __init__(self, reason: str, node: onnx.NodeProto | None = None):
        super().__init__(reason)
        self.reason = reason
        self.node = node


class FoldMeter:
    """One import's spending against its budget (shared by every nested evaluator)."""

    def __init__(self, budget: ImportBudget):
        self.budget = budget
        self.steps = 0
        self.bytes = 0
        self.seconds = 0.0  # spent in folds so far

    def tick(self, node: onnx.NodeProto | None) -> None:
        """Count one evaluation against the step limit."""
        self.steps += 1
        if self.steps > self.budget.max_steps:
            raise BudgetExceeded(f"more than {self.budget.max_steps:,} evaluations while "
                                 "folding constants (ImportBudget.max_steps)", node)

    def check_result_bytes(self, nbytes: int, node: onnx.NodeProto | None,
                           what: str = "its result") -> None:
        """Refuse a result over the per-fold cap (before it is allocated)."""
        cap = self.budget.max_fold_bytes
        if nbytes > cap:
            raise BudgetExceeded(f"{what} would take {_fmt_bytes(nbytes)}, over the "
                                 f"{_fmt_bytes(cap)} folding cap (ImportBudget.max_fold_bytes)",
                                 node)

    def add_folded(self, arrays: Sequence[Any], node: onnx.NodeProto) -> None:
        """Count folded results toward the import's total."""
        self.bytes += sum(int(getattr(a, "nbytes", 0)) for a in arrays)
        cap = self.budget.max_total_bytes
        if self.bytes > cap:
            raise BudgetExceeded(f"folded constants total {_fmt_bytes(self.bytes)}, over "
                                 f"{_fmt_bytes(cap)} (ImportBudget.max_total_bytes)", node)

    def foldable(self, graph: Any) -> bool:
        """Whether every node of ``graph`` (built from constants, so statically shaped)
        stays under the per-result cap; checked before the executor allocates anything."""
        cap = self.budget.max_fold_bytes
        for node in graph.nodes:
            for t in node.types:
                if any(not isinstance(d, int) for d in t.shape) or t.nbytes() > cap:
                    return False
        return True

    @contextlib.contextmanager
    def timed(self, node: "onnx.NodeProto"):
        """Count one fold's time toward ``max_seconds`` (checked when it ends)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - started
        if self.seconds > self.budget.max_seconds:
            raise BudgetExceeded(f"folding constants took {self.seconds:.1f} s, over "
                                 f"{self.budget.max_seconds:g} s (ImportBudget.max_seconds)",
                                 node)

    def check_iterations(self, node: "onnx.NodeProto | None", count: int, what: str) -> None:
        """Refuse a Loop trip count or Scan length over the budget, before unrolling."""
        cap = self.budget.max_loop_iterations
        if count > cap:
            raise BudgetExceeded(f"its {what} {count:,} exceeds the {cap:,} iterations "
                                 "allowed at import (ImportBudget.max_loop_iterations)", node)

    def precheck(self, node: onnx.NodeProto, inputs: list) -> None:
        """Size and trip-count checks from the node's inputs, before it runs."""
        self.tick(node)
        op = node.op_type
        b = self.budget
        if op == "Loop":
            trip = _scalar(inputs, 0)
            if trip is None:
                return  # no trip count: bounded by the condition and max_steps
            if trip > b.max_loop_iterations:
                raise BudgetExceeded(f"its trip count {trip:,} exceeds the "
                                     f"{b.max_loop_iterations:,} iterations allowed at import "
                                     "(ImportBudget.max_loop_iterations)", node)
            return
        if op == "Scan":
            lengths = [a.shape[0] for a in inputs if isinstance(a, np.ndarray) and a.ndim]
            if lengths and max(lengths) > b.max_loop_iterations:
                raise BudgetExceeded(f"its sequence length {max(lengths):,} exceeds the "
                                     f"{b.max_loop_iterations:,} iterations allowed at import "
                                     "(ImportBudget.max_loop_iterations)", node)
            return
        count, itemsize = estimate_output(node, inputs)
        if count is not None:
            self.check_result_bytes(count * itemsize, node)


# ---- size estimates, from declared inputs -------------------------------------------------

_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal",
                 "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "Max", "Min",
                 "Sum", "Mean", "BitShift", "PRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
# ops whose result size comes from their input *values* (not just their shapes)
_FROM_VALUES = {"ConstantOfShape", "Expand", "Tile", "Range", "OneHot", "Pad", "Resize",
                "Upsample"}
_LIMIT = 1 << 62  # any estimate past this is refused anyway; keeps products bounded


def estimate_output(node: onnx.NodeProto, inputs: list) -> tuple[int | None, int]:
    """(element count, bytes per element) of the node's largest output, or (None, 0) when
    it cannot be told before running."""
    from onnx import helper  # lazy: gd.ImportBudget must not load onnx at import graphdl

    op = node.op_type
    arrays = [a if isinstance(a, np.ndarray) else None for a in inputs]
    first = arrays[0] if arrays else None
    if op in _FROM_VALUES and any(a is not None and a.dtype == object for a in arrays):
        return None, 0  # symbolic sizes: known when the model runs, never allocated here
    size = first.dtype.itemsize if first is not None and first.dtype != object else 8
    try:
        if op == "ConstantOfShape":
            value = _attr(node, "value")
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(value.data_type)).itemsize \
                if value is not None else 4
            return _prod(_ints(first)), itemsize
        if op == "Expand":
            return _prod(_broadcast([first.shape, tuple(_ints(arrays[1]))])), size
        if op == "Tile":
            reps = _ints(arrays[1])
            return _prod(first.shape) * _prod(reps) if len(reps) else first.size, size
        if op == "Range":
            start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in arrays[:3])
            if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
                return _LIMIT, size
            return max(0, math.ceil((limit - start) / delta)), size
        if op == "OneHot":
            depth = int(np.asarray(arrays[1]).reshape(-1)[0])
            return _prod(first.shape) * max(depth, 0), arrays[2].dtype.itemsize
        if op == "Pad":
            pads = _ints(arrays[1]) if len(arrays) > 1 and arrays[1] is not None else \
                list(_attr(node, "pads") or [])
            rank = first.ndim
            dims = [d + (pads[i] if i < len(pads) else 0) + (pads[i + rank] if i + rank <
                                                             len(pads) else 0)
                    for i, d in enumerate(first.shape)]
            return _prod(max(d, 0) for d in dims), size
        if op in ("Resize", "Upsample"):
            sizes = arrays[3] if len(arrays) > 3 else None
            if sizes is not None and sizes.size:
                return _prod(_ints(sizes)), size
            scales = arrays[2] if op == "Resize" and len(arrays) > 2 else (
                arrays[1] if len(arrays) > 1 else None)
            if scales is not None and scales.size == first.ndim:
                factor = float(np.prod(np.abs(scales.astype(np.float64))))
                return min(_LIMIT, int(first.size * factor) + 1), size
            return None, 0
        if op in _BROADCASTING and all(a is not None for a in arrays if a is not None):
            shapes = [a.shape for a in arrays if a is not None]
            itemsize = max(a.dtype.itemsize for a in arrays if a is not None)
            return _prod(_broadcast(shapes)), itemsize
        if op in ("MatMul", "Gemm") and len(arrays) >= 2 and arrays[1] is not None:
            a, b = first, arrays[1]
            if op == "Gemm":
                n = a.shape[1] if _attr(node, "transA") else a.shape[0]
                m = b.shape[0] if _attr(node, "transB") else b.shape[1]
                return _prod((n, m)), size
            if a.ndim >= 1 and b.ndim >= 1:
                batch = _broadcast([a.shape[:-2], b.shape[:-2]])
                rows = a.shape[-2] if a.ndim >= 2 else 1
                cols = b.shape[-1] if b.ndim >= 2 else 1
                return _prod((*batch, rows, cols)), size
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError):
        return _LIMIT, size  # inputs that do not even describe a shape: refuse to run it
    if op == "Gather" and len(arrays) > 1 and arrays[1] is not None:
        axis = _attr(node, "axis") or 0
        rows = first.shape[axis] if first.ndim else 1
        return (first.size // max(rows, 1)) * arrays[1].size, size
    if op == "Concat":
        return sum(a.size for a in arrays if a is not None), size
    return None, 0


def _attr(node: onnx.NodeProto, name: str):
    from onnx import helper  # lazy: gd.ImportBudget must not load onnx at import graphdl

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _ints(a) -> list[int]:
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise TypeError("not a shape")
    return [int(v) for v in arr.reshape(-1)]


def _prod(dims) -> int:
    total = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise ValueError("negative dim")
        total = min(total * d, _LIMIT) if d else 0
        if total == 0:
            return 0
    return total


def _broadcast(shapes: list[tuple]) -> tuple:
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        out.append(max(dims) if dims else 1)
    return tuple(out)


def _scalar(inputs: list, i: int) -> int | None:
    a = inputs[i] if len(inputs) > i else None
    if not isinstance(a, np.ndarray) or a.size != 1 or a.dtype.kind not in "iu":
        return None
    return int(a.reshape(-1)[0])


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


# no real tensor is this big; beyond it sizes stop fitting the planner's int64 arithmetic
MAX_TENSOR_BYTES = 1 << 48


def check_graph_sizes(graph: Any) -> None:
    """Refuse an imported graph that declares a tensor of ``MAX_TENSOR_BYTES`` or more
    (symbolic dims counted as 1): a corrupt or hostile file, not a model."""
    from graphdl.backends.onnx_import import OnnxImportError  # lazy: it imports this module

    for node in graph.nodes:
        for t in node.types:
            count = 1
            for d in t.shape:
                count *= d if isinstance(d, int) else 1
            nbytes = count * numpy_dtype(t.dtype).itemsize
            if nbytes >= MAX_TENSOR_BYTES:
                raise OnnxImportError(f"{node.op} node {node.name or '(unnamed)'!r} declares a "
                                      f"tensor of shape {tuple(t.shape)} "
                                      f"({_fmt_bytes(nbytes)}), beyond any real model "
                                      "(graphdl reads tensors under "
                                      f"{_fmt_bytes(MAX_TENSOR_BYTES)})")


def over_budget(imp: Any, node: "onnx.NodeProto", attrs: dict, err: BudgetExceeded,
                rules: dict) -> list:
    """A node too costly to fold: imported as a runtime node when graphdl has a rule for it
    (its inputs stay constants, its result is computed when the model runs), else refused
    with an error naming the node and the budget."""
    # lazy: onnx_import imports this module
    from graphdl.backends.onnx_import import OnnxImportError

    where = imp.where()
    if err.node is not None and err.node is not node:
        where += f" (in its subgraph, {err.node.op_type} node {err.node.name or '(unnamed)'!r})"
    refusal = OnnxImportError(f"{where}: not evaluated at import: {err.reason}; raise the "
                              "budget with gd.import_onnx(path, budget=gd.ImportBudget(...)) or "
                              "graphdl optimize --import-budget if you trust this file")
    if "max_fold_bytes" not in err.reason or node.op_type in ("Loop", "Scan", "If"):
        raise refusal
    if node.op_type == "ConstantOfShape":
        shape = imp.ints(node.input[0])
        value = np.asarray(attrs.get("value", np.zeros(1, np.float32)))
        scalar = value.reshape(-1)[:1].reshape(())
        return [F.broadcast_to(F.const(scalar, dtype=scalar.dtype.name), shape)]
    rule = rules.get(node.op_type)
    if rule is None:
        raise refusal
    return list(rule(imp, node, attrs))
