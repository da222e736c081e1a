"""The ONNX form of an in-place, guarded state update for ONNX Runtime.

:func:`graphdl.passes.inplace_update.guard_updates` gives every update the form
``Where(ok, new, old)`` with one scalar ``ok``; the runner binds each update output to the
buffer of its old value. :func:`select_by_if` rewrites the exported model so ONNX Runtime
runs that well:

- The ``Where`` nodes become one ``If(ok)``. ORT's CPU Where walks a broadcast loop (measured
  8.1 ms on 2.4 M floats, 14x a Sub); the else branch returns ``old`` into the buffer ``old``
  already is (no copy: a skipped step costs nothing).
- With ``recompute=True`` the then branch recomputes each new value's elementwise tail (the
  optimizer's chain after the gradient: ``m*buf + g``, ``p - lr*buf``, Adam's moments) from
  the same inputs and writes it straight into the state buffer. The copies outside the If
  only feed the guard's sums, so ORT frees each right after its sum: no step ever holds all
  the new values at once next to the old ones (without it, the arena holds them all until
  ``ok`` is known, which ate the memory the spare buffers saved). ORT's elementwise kernels
  are deterministic, so the values written are the values checked.
- Inside the then branch the nodes run in data order only, so a node reading an old value
  must be an ancestor of (or be) the node writing that value; where that fails the new value
  is copied in instead (``Identity``).
"""
from __future__ import annotations

from typing import Sequence

import onnx

# ONNX ops recomputed inside the If: elementwise, so a node writing into the buffer of an
# input it reads sees each element before it overwrites it
ELEMENTWISE_RECOMPUTE_RULES = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Pow", "Exp", "Log",
    "Cast", "Max", "Min", "Where", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And", "Or", "Sign", "Identity",
})


def select_by_if(proto: onnx.ModelProto, names: Sequence[str], in_place: Sequence[str] = (),
                 recompute: bool = True) -> bool:
    """Turn the ``Where(ok, new, old)`` nodes producing the outputs ``names`` into one
    ``If(ok)`` (see the module docstring); ``in_place`` are the outputs bound to their old
    value's buffer. True when it did (the nodes had that form)."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    wheres = [producers.get(name) for name in names]
    if not wheres or any(n is None or n.op_type != "Where" for n in wheres) or \
            len({n.input[0] for n in wheres}) != 1:
        return False
    cond = wheres[0].input[0]
    where_ids = {id(n) for n in wheres}
    tail = _tails(graph, producers, [n.input[1] for n in wheres], where_ids) \
        if recompute else []
    inside, kept_outputs = _then_nodes(tail, wheres, set(in_place))
    if inside is None:  # an old value read after its write: copy every new value in
        inside, kept_outputs = _then_nodes([], wheres, set(in_place))
    types = {o.name: o.type for o in graph.output}
    then_branch = _branch("updates_kept", _live(inside, set(kept_outputs)), kept_outputs,
                          names, types)
    skipped = [onnx.helper.make_node("Identity", [w.input[2]], [f"{w.output[0]}.skipped"])
               for w in wheres]
    else_branch = _branch("updates_skipped", skipped, [n.output[0] for n in skipped], names,
                          types)
    select = onnx.helper.make_node("If", [cond], list(names), then_branch=then_branch,
                                   else_branch=else_branch)
    outer = [n for n in graph.node if id(n) not in where_ids] + [select]
    del graph.node[:]  # the tails outside the If now feed only the guard's sums
    graph.node.extend(_live(outer, {o.name for o in graph.output}))
    return True


def _then_nodes(tail, wheres, in_place: set[str]):
    """(nodes, outputs) of the then branch: ``tail`` recomputed under new names, each new
    value written by its own node, or copied in when it is not recomputed; (None, None) when
    a recomputed node would read an old value after its in-place write."""
    rename = {out: f"{out}.kept" for node in tail for out in node.output}
    inside = []
    for node in tail:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name}.kept" if node.name else ""
        copy.input[:] = [rename.get(i, i) for i in node.input]
        copy.output[:] = [rename[o] for o in node.output]
        inside.append(copy)
    outputs = []
    for where in wheres:
        new, old = where.input[1], where.input[2]
        if new in rename:
            if where.output[0] in in_place and not _writes_safely(inside, rename[new], old):
                return None, None
            outputs.append(rename[new])
        else:
            name = f"{where.output[0]}.kept"
            inside.append(onnx.helper.make_node("Identity", [new], [name]))
            outputs.append(name)
    return inside, outputs


def _tails(graph, producers, news: list[str], stop: set[int]) -> list[onnx.NodeProto]:
    """The elementwise nodes the new values are computed by, back to the first other op,
    in the graph's (topological) order."""
    found: set[int] = set()
    stack = [producers.get(name) for name in news]
    while stack:
        node = stack.pop()
        if node is None or id(node) in found or id(node) in stop or \
                node.op_type not in ELEMENTWISE_RECOMPUTE_RULES:
            continue
        found.add(id(node))
        stack.extend(producers.get(i) for i in node.input)
    return [n for n in graph.node if id(n) in found]


def _writes_safely(inside: list[onnx.NodeProto], new: str, old: str) -> bool:
    """Whether every node of ``inside`` reading ``old`` runs before (or is) the node writing
    ``new`` into ``old``'s buffer."""
    producers = {out: node for node in inside for out in node.output}
    writer = producers[new]
    before: set[int] = set()
    stack = [writer]
    while stack:
        node = stack.pop()
        if id(node) in before:
            continue
        before.add(id(node))
        stack.extend(producers[i] for i in node.input if i in producers)
    return all(id(node) in before for node in inside if old in node.input)


def _live(nodes: list[onnx.NodeProto], used_by_outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` (topologically ordered) without those nothing in ``used_by_outputs``
    needs."""
    needed = set(used_by_outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) or _has_subgraph(node):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_outer_refs(attr.g))
    return keep[::-1]


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def _outer_refs(g: onnx.GraphProto) -> set[str]:
    made = {o for n in g.node for o in n.output}
    return {i for n in g.node for i in n.input if i not in made}


def _branch(label: str, nodes, outputs: list[str], names: Sequence[str], types
            ) -> onnx.GraphProto:
    infos = []
    for out, name in zip(outputs, names):
        info = onnx.ValueInfoProto(name=out)
        info.type.CopyFrom(types[name])
        infos.append(info)
    return onnx.helper.make_graph(nodes, label, [], infos)
