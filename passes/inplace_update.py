"""Apply a train step's state updates in place: the guard moves into the graph, and every
reader of an old value is ordered before the write that replaces it.

A runner that writes a Variable's new value into the very buffer that holds its old value
(ONNX Runtime with the update output bound to the input's OrtValue, see
:mod:`graphdl.backends.ort_train`) needs two things a double-buffered runner does not:

- **The NaN guard inside the graph.** The host can no longer drop a bad step by not swapping
  buffers, so :func:`guard_updates` rewrites each update ``(var, new)`` into
  ``(var, Where(ok, new, old))``. ``ok`` is ``|total| < inf`` where ``total`` is the float64
  sum of the float updates and of the ``check`` outputs (the loss): finite exactly when none
  of them holds a NaN or an Inf (barring an overflow of the sum itself, which then skips a
  good step rather than keep a bad one). An update whose NaN/Inf would reach another checked
  update is not summed (:func:`checked_updates`: one reduction per parameter for SGD).
  ``total`` is appended as the last output, so the host still learns about the skipped step
  from one scalar. Integer state (the step counter,
  seeds) is selected by the same ``ok``, so a skipped step leaves *every* variable as it was.
- **Reads before writes.** ONNX Runtime orders nodes by data dependencies only; it may run
  ``Where`` (which writes ``var``'s buffer) before another node that still reads the old
  value (say the input-gradient convolution reading a weight), and that node would read the
  new weight. Every ``Where`` reads ``ok``, so it suffices that ``ok`` depends on every reader
  of every in-place variable's old value. Readers that ``total`` depends on already are
  ordered; each other one gets a *token*: ``sum(cast(reshape(r, (-1, 1))[:, 0:0]))``, an
  exact 0.0 computed from an empty slice of the reader's output (no element is read, so it is
  never NaN, and no runtime can fold it: its input is not a constant) added into ``total``.
  A reader is found through view chains (a ``Reshape`` of a weight shares its buffer, so the
  reader is the node that consumes the reshape).

:func:`shared_buffers` names the variables that must *not* be written in place: those whose
new value is itself a view of another variable's old value (``a, b = b, a``: each write
would clobber what the other ``Where`` still reads) and those whose old value reaches a graph
output through views (the host reads outputs after the run, when the buffer holds the new
value). A runner keeps double buffers for those few.
"""
from __future__ import annotations

from typing import Sequence

from graphdl.ir import PARAM, Graph, Node, Value, Variable
from graphdl.ops.elementwise import abs as abs_, add, cast, less, where
from graphdl.ops.getitem import getitem
from graphdl.ops.reduce import sum as sum_
from graphdl.ops.registry import constant, get_op
from graphdl.ops.shape import reshape


# Ops whose output is non-finite somewhere whenever the listed inputs are (x*0 is NaN for an
# Inf x; finite/Inf is 0, so a divisor does not count): the guard sums one update instead of
# two when the other flows into it through these (see :func:`checked_updates`).
NONFINITE_PROPAGATION_RULES = {
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0,), "Neg": (0,), "Sqrt": (0,),
    "Abs": (0,), "Reshape": (0,), "ReduceSum": (0,),
}


def checked_updates(graph: Graph) -> list[int]:
    """Indices of the float updates whose finiteness the guard must check: an update whose
    every NaN/Inf would reach another checked update (through
    :data:`NONFINITE_PROPAGATION_RULES`) needs no reduction of its own. SGD with momentum
    checks the parameter only (``p - lr * buf`` carries any non-finite ``buf``), Adam the
    parameter and the second moment (``m / (sqrt(v) + eps)`` carries ``m``, not ``v``)."""
    floats = [i for i, (_, v) in enumerate(graph.updates) if _is_float(v)]
    reach = {i: _propagated_from(graph.updates[i][1]) for i in floats}
    checked = list(floats)
    for i in floats:
        value = id(graph.updates[i][1])
        if any(j != i and value in reach[j] for j in checked):
            checked.remove(i)  # implied by a still-checked update (transitively, if removed)
    return checked


def _propagated_from(value: Value) -> set[int]:
    """ids of the values a NaN/Inf in which makes ``value`` non-finite somewhere."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        stack.extend(v.node.inputs[i] for i in _propagating_inputs(v.node))
    return seen


def _propagating_inputs(node: Node) -> set[int]:
    opdef = get_op(node.op)
    if not (opdef.holds_program and opdef.elementwise):  # an epilogue's producer: not walked
        return {i for i in NONFINITE_PROPAGATION_RULES.get(node.op, ()) if i < len(node.inputs)}
    program, n = node.attrs["program"], len(node.inputs)
    found: set[int] = set()
    stack, seen = [n + len(program) - 1], set()
    while stack:
        k = stack.pop()
        if k in seen:
            continue
        seen.add(k)
        if k < n:
            found.add(k)
            continue
        op_name, args, _ = program[k - n]
        stack.extend(args[i] for i in NONFINITE_PROPAGATION_RULES.get(op_name, ())
                     if i < len(args))
    return found


def guard_updates(graph: Graph, check: Sequence[int] = (), order: bool = True) -> Graph:
    """``graph`` with every update selected by one in-graph finiteness flag, the flag ordered
    after every reader of an updated variable's old value, and the float64 guard total as one
    more output (see the module docstring). ``check`` are indices of outputs (the loss) whose
    finiteness the step also needs. ``order=False`` leaves out the ordering tokens (only for
    tests that show why they are needed)."""
    if not graph.updates:
        return graph
    terms = [_total_of(graph.updates[i][1]) for i in checked_updates(graph)]
    terms += [_total_of(graph.outputs[i]) for i in check if _is_float(graph.outputs[i])]
    total = _add_all(terms) if terms else constant(0.0, "float64")
    if order:
        done = _ancestors([total])
        tokens = [_token(r) for r in _readers(graph, {id(var) for var, _ in graph.updates})
                  if id(r) not in done]
        total = _add_all([total] + tokens)
    ok = less(abs_(total), constant(float("inf"), "float64"))  # False for Inf or NaN
    updates = []
    for var, new in graph.updates:
        old = _old_value(graph, var, new)
        updates.append((var, where(ok, new, old)))
    return Graph(list(graph.inputs), list(graph.outputs) + [total], updates, name=graph.name)


def shared_buffers(graph: Graph) -> set[int]:
    """ids of the updated Variables that cannot be written in place (see the module
    docstring): their new value is a view of another variable's old value, or their old value
    reaches a graph output through views."""
    updated = {id(var) for var, _ in graph.updates}
    shared = set()
    for var, new in graph.updates:
        root = _view_root(new)
        if root.op == PARAM and root.attrs["variable"] is not var and \
                id(root.attrs["variable"]) in updated:
            shared.add(id(root.attrs["variable"]))  # its write would clobber what `new` reads
    for out in graph.outputs:
        root = _view_root(out)
        if root.op == PARAM and id(root.attrs["variable"]) in updated:
            shared.add(id(root.attrs["variable"]))
    return shared


def _is_float(v: Value) -> bool:
    return v.dtype.startswith(("float", "bfloat"))


def _total_of(v: Value) -> Value:
    """A float64 scalar that is finite exactly when ``v`` holds no NaN or Inf."""
    s = sum_(v) if v.shape else v
    return s if s.dtype == "float64" else cast(s, "float64")


def _add_all(values: list[Value]) -> Value:
    total = values[0]
    for v in values[1:]:
        total = add(total, v)
    return total


def _token(reader: Node) -> Value:
    """0.0 (float64) that depends on ``reader`` having run, reading none of its elements."""
    out = reader.outputs[0]
    empty = getitem(reshape(out, (-1, 1)), (slice(None), slice(0, 0)))
    return sum_(cast(empty, "float64"))


def _view_root(v: Value) -> Node:
    node = v.node
    while node.inputs and get_op(node.op).view:
        node = node.inputs[0].node
    return node


def _readers(graph: Graph, updated: set[int]) -> list[Node]:
    """The nodes that read an updated variable's old buffer: consumers of its PARAM nodes,
    followed through views to the nodes that read the data."""
    consumers: dict[int, list[Node]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            consumers.setdefault(id(v.node), []).append(node)
    frontier = [n for n in graph.nodes
                if n.op == PARAM and id(n.attrs["variable"]) in updated]
    seen: set[int] = set()
    readers: list[Node] = []
    while frontier:
        node = frontier.pop()
        for user in consumers.get(id(node), ()):
            if id(user) in seen:
                continue
            seen.add(id(user))
            if get_op(user.op).view and user.inputs[0].node is node:
                frontier.append(user)  # shares the buffer: its consumers are the readers
            else:
                readers.append(user)
    return readers


def _ancestors(values: list[Value]) -> set[int]:
    seen: set[int] = set()
    stack = [v.node for v in values]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(v.node for v in node.inputs)
    return seen


def _old_value(graph: Graph, var: Variable, new: Value) -> Value:
    """The graph's value reading ``var`` (a fresh PARAM node when the graph has none)."""
    for node in graph.nodes:
        if node.op == PARAM and node.attrs["variable"] is var:
            return node.outputs[0]
    return Node(PARAM, (), {"variable": var}, (new.type,), name=var.name).outputs[0]
