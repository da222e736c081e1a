"""Elementwise fusion: chains and trees of elementwise ops become one ``FusedElementwise``
node, and a Conv/Gemm/MatMul whose only consumer is such a group takes the group as its
epilogue (``FusedConv``/``FusedGemm``/``FusedMatMul``: bias, residual add, activation applied
in place on the producer's output).

Groups grow backwards from a root, in reverse schedule order, absorbing a producer only when
every consumer of its value is already in the group and the value is not a graph output, so no
value is computed twice and nothing outside the group needs an intermediate. A max-heap on
schedule position makes that check exact (all of a producer's in-group consumers come later
in the schedule, so they were seen first). Linear up to the heap's log factor.
"""
from __future__ import annotations

import heapq

from graphdl.ir import Graph, Node, Value
from graphdl.ops.fused import instruction
from graphdl.ops.registry import get_op
from graphdl.passes.rewrite import build, replace_nodes


def _fusible(node: Node) -> bool:
    """An elementwise op (a FusedElementwise too: its program is inlined)."""
    return len(node.outputs) == 1 and get_op(node.op).elementwise


def find_groups(graph: Graph) -> list[list[Node]]:
    """Groups of fusible nodes (each in schedule order; the last one is the root)."""
    nodes = graph.nodes
    pos = {id(n): i for i, n in enumerate(nodes)}
    consumers: dict[Value, list[Node]] = {}
    for node in nodes:
        for v in node.inputs:
            consumers.setdefault(v, []).append(node)
    outputs = set(graph.all_outputs)
    taken: set[int] = set()
    groups = []
    for root in reversed(nodes):
        if id(root) in taken or not _fusible(root):
            continue
        members = {id(root)}
        group = [root]
        taken.add(id(root))
        heap = [(-pos[id(v.node)], id(v.node), v.node) for v in root.inputs]
        heapq.heapify(heap)
        while heap:
            _, key, node = heapq.heappop(heap)
            if key in members or key in taken or not _fusible(node):
                continue
            v = node.outputs[0]
            if v in outputs or not all(id(c) in members for c in consumers.get(v, ())):
                continue
            members.add(key)
            group.append(node)
            taken.add(key)
            for u in node.inputs:
                heapq.heappush(heap, (-pos[id(u.node)], id(u.node), u.node))
        groups.append(sorted(group, key=lambda n: pos[id(n)]))
    return groups


def _program(members: list[Node], first: Value | None = None):
    """(external input values, program) computing the group's root; ``first`` (if given)
    becomes program input 0."""
    inside = {id(n) for n in members}
    ext: list[Value] = [] if first is None else [first]
    slot: dict[Value, int] = {} if first is None else {first: 0}
    for node in members:
        for v in node.inputs:
            if id(v.node) not in inside and v not in slot:
                slot[v] = len(ext)
                ext.append(v)
    n_in = len(ext)
    program: list[tuple] = []
    result: dict[Value, int] = {}

    def ref(v: Value) -> int:
        return result[v] if v in result else slot[v]

    for node in members:
        args = [ref(v) for v in node.inputs]
        if get_op(node.op).holds_program:  # inline an earlier fusion
            base = n_in + len(program)
            inner_n = len(node.inputs)
            for op_name, inner_args, attrs in node.attrs["program"]:
                mapped = [args[a] if a < inner_n else base + (a - inner_n) for a in inner_args]
                program.append((op_name, tuple(mapped), attrs))
        else:
            program.append(instruction(node.op, args, node.attrs))
        result[node.outputs[0]] = n_in + len(program) - 1
    return ext, tuple(program)


def _epilogue_producer(members: list[Node], graph_outputs: set, consumers) -> Value | None:
    """A Conv/Gemm/MatMul value only this group consumes, of the group's output type."""
    inside = {id(n) for n in members}
    out_type = members[-1].types[0]
    for node in members:
        for v in node.inputs:
            p = v.node
            if get_op(p.op).epilogue is None or len(p.outputs) != 1 or v in graph_outputs:
                continue
            if v.type != out_type or not all(id(c) in inside for c in consumers.get(v, ())):
                continue
            return v
    return None


def fuse_elementwise(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Fuse elementwise groups, and producers into their elementwise epilogues."""
    consumers: dict[Value, list[Node]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            consumers.setdefault(v, []).append(node)
    outputs = set(graph.all_outputs)
    builders = {}
    for members in find_groups(graph):
        root = members[-1]
        producer = _epilogue_producer(members, outputs, consumers)
        if producer is None and (len(members) == 1 or _already_fused(members)):
            continue
        if producer is None:
            ext, program = _program(members)
            builders[id(root)] = _make(root, "FusedElementwise", ext, program=program)
            _count(fired, "fuse_elementwise")
        else:
            main = producer.node
            ext, program = _program(members, first=producer)
            fused = get_op(main.op).epilogue
            builders[id(root)] = _make(root, fused, list(main.inputs) + ext[1:],
                                       name=main.name or root.name, main=_frozen(main.attrs),
                                       n_main=len(main.inputs), program=program)
            _count(fired, fused)
    return replace_nodes(graph, builders)


def _already_fused(members: list[Node]) -> bool:
    return len(members) == 1 and get_op(members[0].op).holds_program


def _frozen(attrs: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


def _make(root: Node, op_name: str, inputs: list[Value], name: str | None = None, **attrs):
    def builder(remap):
        return [build(op_name, *[remap(v) for v in inputs], name=name or root.name,
                      site=root.site, **attrs)]
    return builder


def _count(fired, key: str) -> None:
    if fired is not None:
        fired[key] = fired.get(key, 0) + 1
