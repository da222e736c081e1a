"""The rewrite engine: patterns, rules, and a one-sweep graph rewriter.

A rule is a pattern plus a replacement function (tinygrad's PatternMatcher, onnxscript's
RewriteRule). The replacement gets a :class:`Match` and returns the new value(s) for the
matched root, or ``None`` when the rule does not apply after all. Commutative ops match their
inputs in both orders without writing the variant. Every rule states its identity in a
trailing comment where it is declared (``# x*1 -> x``).

:func:`rewrite_graph` walks the schedule once, rebuilding each node over its already rewritten
inputs, so patterns always see the rewritten graph. A pass that changes nothing returns the
very same graph object, which is how the pass manager detects a fixed point cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from graphdl.ir import Graph, GraphError, Node, TensorType, Value, rebuild
from graphdl.ops.registry import CONST, REGISTRY, OpDef, constant, get_op
from graphdl.ops.registry import build as build_node

_MAX_LOCAL_REWRITES = 8  # rules re-tried on a fresh replacement root, at most this many times


OpKind = Callable[[OpDef], bool]  # a kind of op, by what it declares: lambda d: d.elementwise


class Pattern:
    """Matches a value: its producing op (a name, a set of names, a kind of op, or any), its
    inputs' patterns (or any inputs), an optional predicate, and a capture name."""

    __slots__ = ("_ops", "kind", "inputs", "capture", "where", "index", "_seen")

    def __init__(self, ops: str | Iterable[str] | OpKind | None = None,
                 inputs: Sequence["Pattern"] | None = None, capture: str | None = None,
                 where: Callable[[Value], bool] | None = None, index: int = 0):
        self.kind = ops if callable(ops) else None
        self._ops = None if ops is None or self.kind is not None else (
            frozenset((ops,)) if isinstance(ops, str) else frozenset(ops))
        self._seen = -1
        self.inputs = None if inputs is None else tuple(inputs)
        self.capture = capture
        self.where = where
        self.index = index

    @property
    def ops(self) -> frozenset[str] | None:
        """The op names this pattern's root may have (None: any); a kind of op is resolved
        against the registry as it stands (ops may register after the pattern is made)."""
        if self.kind is not None and self._seen != len(REGISTRY):
            self._ops = frozenset(n for n, d in REGISTRY.items() if self.kind(d))
            self._seen = len(REGISTRY)
        return self._ops


def op(ops: str | Iterable[str] | OpKind, *inputs: Pattern, capture: str | None = None,
       where: Callable[[Value], bool] | None = None, index: int = 0) -> Pattern:
    """A pattern for a value made by ``ops`` from values matching ``inputs`` (any if none)."""
    return Pattern(ops, inputs if inputs else None, capture, where, index)


def any_value(capture: str | None = None, where: Callable[[Value], bool] | None = None
              ) -> Pattern:
    """A pattern matching any value (a leaf), captured under ``capture``."""
    return Pattern(None, None, capture, where)


def const(capture: str | None = None, value: float | None = None) -> Pattern:
    """A pattern for a constant whose elements all equal ``value`` (any constant if None)."""
    if value is None:
        return Pattern(None, None, capture, lambda v: constant_array(v) is not None)
    return Pattern(None, None, capture, lambda v: uniform_value(v) == value)


def constant_array(v: Value) -> np.ndarray | None:
    """The array behind a ``Const`` value, else None."""
    return v.node.attrs["value"] if v.node.op == CONST else None


def uniform_value(v: Value) -> float | None:
    """The one value every element of ``v`` holds, when that is known at compile time:
    small constants, broadcasts of them, and ``ZerosLike``."""
    node = v.node
    if node.op == CONST:
        arr = node.attrs["value"]
        if arr.size == 0 or arr.size > 4096:
            return None
        first = arr.flat[0]
        return first.item() if (arr == first).all() else None
    opdef = get_op(node.op)
    if opdef.expand:
        return uniform_value(node.inputs[0])
    if opdef.fill is not None:
        return int(opdef.fill) if float(opdef.fill).is_integer() else opdef.fill
    return None


@dataclass(frozen=True)
class Rule:
    """A named rewrite: ``pattern`` locates the root; ``replace(match)`` returns the new value
    (or a tuple, one per output of a multi-output root) or None to decline."""

    name: str
    pattern: Pattern
    replace: Callable[["Match"], Any]


def _key(v: Value) -> tuple[int, int]:
    return (id(v.node), v.index)


class RewriteContext:
    """What rules may ask about the graph being rewritten: use counts and consumers.

    They are taken on the input graph when a rule first asks, then kept conservative: every
    rewrite so far is replayed (a value taking over another's uses, new nodes' inputs), so a
    count may be stale high (a dead consumer) but never stale low.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.original: set[int] = {id(n) for n in graph.nodes}
        self.processed: set[int] = set(self.original)  # nodes the sweep itself visits
        self.known: set[int] = set(self.original)
        self._uses: dict[tuple[int, int], int] | None = None
        self._consumers: dict[tuple[int, int], list[Node]] | None = None
        self._outputs: set[tuple[int, int]] | None = None
        self._events: list[tuple] = []
        self._alive: list[Node] = []  # known ids must not be recycled by new objects

    @property
    def uses(self) -> dict[tuple[int, int], int]:
        """Use counts keyed by (id(node), output index); graph outputs count as a use."""
        if self._uses is None:
            uses: dict[tuple[int, int], int] = {}
            for node in self.graph.nodes:
                for v in node.inputs:
                    k = (id(v.node), v.index)
                    uses[k] = uses.get(k, 0) + 1
            for v in self.graph.all_outputs:
                k = (id(v.node), v.index)
                uses[k] = uses.get(k, 0) + 1
            for event in self._events:
                _replay(uses, event)
            self._uses = uses
        return self._uses

    @property
    def consumers(self) -> dict[tuple[int, int], list[Node]]:
        """Consumers in the input graph, keyed by (id(node), output index)."""
        if self._consumers is None:
            self._consumers = {}
            for node in self.graph.nodes:
                for v in node.inputs:
                    self._consumers.setdefault((id(v.node), v.index), []).append(node)
        return self._consumers

    @property
    def outputs(self) -> set[tuple[int, int]]:
        """Keys of the graph's outputs and update values."""
        if self._outputs is None:
            self._outputs = {_key(v) for v in self.graph.all_outputs}
        return self._outputs

    def note_new(self, values: Iterable[Value | None]) -> None:
        """Count the uses that freshly built nodes add, so use counts never go stale low."""
        stack = [v.node for v in values if v is not None and id(v.node) not in self.known]
        while stack:
            node = stack.pop()
            if id(node) in self.known:
                continue
            self.known.add(id(node))
            self._alive.append(node)
            for v in node.inputs:
                self._record(("inc", _key(v)))
                if id(v.node) not in self.known:
                    stack.append(v.node)

    def note_replaced(self, old: Value, new: Value) -> None:
        """``new`` takes over every use of ``old``."""
        self._record(("move", _key(old), _key(new)))

    def note_rebuilt(self, old: Node, new: Node) -> None:
        """``new`` is ``old`` over rewritten inputs: its outputs inherit the uses."""
        self.known.add(id(new))
        self.processed.add(id(new))
        self._alive.append(new)
        for a, b in zip(old.outputs, new.outputs):
            self.note_replaced(a, b)

    def _record(self, event: tuple) -> None:
        if self._uses is None:
            self._events.append(event)
        else:
            _replay(self._uses, event)


def _replay(uses: dict, event: tuple) -> None:
    if event[0] == "inc":
        uses[event[1]] = uses.get(event[1], 0) + 1
    else:
        uses[event[2]] = uses.get(event[2], 0) + uses.get(event[1], 0)


class Match:
    """A successful match: captured values by name, the root node, and builders that give new
    nodes the root's call site."""

    __slots__ = ("root", "captures", "ctx")

    def __init__(self, root: Node, captures: dict[str, Value], ctx: RewriteContext | None):
        self.root = root
        self.captures = captures
        self.ctx = ctx

    def __getitem__(self, name: str) -> Value:
        return self.captures[name]

    def get(self, name: str) -> Value | None:
        """The capture ``name``, or None."""
        return self.captures.get(name)

    @property
    def value(self) -> Value:
        """The root's first output."""
        return self.root.outputs[0]

    @property
    def type(self) -> TensorType:
        """The type of the root's first output."""
        return self.root.types[0]

    def uses(self, v: Value) -> int:
        """How many times ``v`` is consumed (graph outputs count as a use); large if unknown."""
        if self.ctx is None:
            return 1 << 30
        return self.ctx.uses.get(_key(v), 1 << 30)

    def only_used_here(self, v: Value) -> bool:
        """True when ``v`` has exactly one use and is not a graph output."""
        return self.uses(v) == 1 and (self.ctx is None or _key(v) not in self.ctx.outputs)

    def consumers(self, v: Value) -> list[Node]:
        """Nodes of the input graph that consume ``v``."""
        return [] if self.ctx is None else self.ctx.consumers.get(_key(v), [])

    def op(self, op_name: str, *inputs: Value, name: str | None = None, **attrs: Any):
        """Build a node (the root's call site); returns its value or values."""
        return build(op_name, *inputs, name=name, site=self.root.site, **attrs)

    def try_op(self, op_name: str, *inputs: Value, **attrs: Any):
        """Like :meth:`op`, but None when inference rejects the inputs."""
        try:
            return self.op(op_name, *inputs, **attrs)
        except GraphError:
            return None

    def const(self, value: Any, dtype: Any = None) -> Value:
        """A constant node (read-only copy of ``value``)."""
        return make_const(value, dtype, site=self.root.site)


def build(op_name: str, *inputs: Value, name: str | None = None, site: str | None = None,
          **attrs: Any):
    """Build one node at ``site`` through the registry (attributes checked and completed,
    inference run); returns its value or values."""
    return build_node(op_name, inputs, attrs, name, site)


def make_const(value: Any, dtype: Any = None, site: str | None = None,
               name: str | None = None) -> Value:
    """A ``Const`` node holding a read-only copy of ``value`` (its dtype kept as given)."""
    return constant(np.asarray(value, dtype=dtype), name=name, site=site)


# ---- matching ------------------------------------------------------------------------------

def match_value(pattern: Pattern, v: Value, captures: dict[str, Value]) -> dict | None:
    """Captures extended by matching ``pattern`` against ``v``, or None."""
    node = v.node
    if pattern.kind is not None:
        if v.index != pattern.index or not pattern.kind(get_op(node.op)):
            return None
    elif pattern.ops is not None and (node.op not in pattern.ops or v.index != pattern.index):
        return None
    if pattern.capture is not None:
        seen = captures.get(pattern.capture)
        if seen is not None and seen is not v:
            return None
    if pattern.where is not None and not pattern.where(v):
        return None
    if pattern.capture is not None and pattern.capture not in captures:
        captures = dict(captures)
        captures[pattern.capture] = v
    if pattern.inputs is None:
        return captures
    return _match_inputs(pattern.inputs, node, captures)


def _match_inputs(pats: tuple[Pattern, ...], node: Node, captures: dict) -> dict | None:
    ins = node.inputs
    if len(pats) != len(ins):
        return None
    orders = [ins]
    if len(ins) == 2 and get_op(node.op).commutative:
        orders.append((ins[1], ins[0]))  # the commutative variant comes for free
    for order in orders:
        caps: dict | None = captures
        for p, x in zip(pats, order):
            caps = match_value(p, x, caps)
            if caps is None:
                break
        if caps is not None:
            return caps
    return None


def match_node(pattern: Pattern, node: Node, ctx: RewriteContext | None = None
               ) -> Match | None:
    """A :class:`Match` of ``pattern`` rooted at ``node``, or None."""
    if pattern.index >= len(node.outputs):
        return None
    caps = match_value(pattern, node.outputs[pattern.index], {})
    return None if caps is None else Match(node, caps, ctx)


# ---- graph rewriting -----------------------------------------------------------------------

def rewrite_graph(graph: Graph, fn: Callable[[Node], Sequence[Value | None] | None],
                  on_rebuild: Callable[[Node, Node], None] | None = None) -> Graph:
    """One sweep over the schedule (:func:`graphdl.ir.rebuild`): ``fn(node)`` sees each node
    rebuilt over its rewritten inputs and returns new values for its outputs (None entries
    keep an output) or None to keep the node. ``on_rebuild(old, new)`` hears of every node
    rebuilt that way. Returns ``graph`` itself when nothing changed."""
    def step(node: Node, inputs: tuple) -> Sequence[Value | None] | None:
        cur = node
        if inputs is not node.inputs and any(a is not b for a, b in zip(inputs, node.inputs)):
            cur = Node(node.op, inputs, node.attrs, node.types, node.name, node.site)
            if on_rebuild is not None:
                on_rebuild(node, cur)
        outs = fn(cur)
        if outs is None:
            return None if cur is node else cur.outputs
        return [here if new is None else new for here, new in zip(cur.outputs, outs)]

    return rebuild(graph, step)


def index_rules(rules: Iterable[Rule]) -> dict[str | None, list[Rule]]:
    """Rules grouped by the op of their root (None: rules whose root is any op)."""
    index: dict[str | None, list[Rule]] = {}
    for rule in rules:
        for name in (rule.pattern.ops or (None,)):
            index.setdefault(name, []).append(rule)
    return index


def apply_rules(graph: Graph, rules: Sequence[Rule], fired: dict[str, int] | None = None
                ) -> Graph:
    """Rewrite ``graph`` once with ``rules``; ``fired`` (if given) counts firings per rule."""
    index = index_rules(rules)
    anywhere = index.get(None, [])
    ctx = RewriteContext(graph)

    def rewrite(node: Node):
        outs = _first_firing(index.get(node.op, ()), anywhere, node, ctx, fired)
        if outs is None or len(outs) != 1 or outs[0] is None:
            return outs
        v = outs[0]
        for _ in range(_MAX_LOCAL_REWRITES):  # a fresh root may simplify further right away
            fresh = v.node
            if id(fresh) in ctx.processed or not fresh.inputs:
                break
            more = _first_firing(index.get(fresh.op, ()), anywhere, fresh, ctx, fired)
            if more is None or more[0] is None:
                break
            v = more[0]
        return [v]

    return rewrite_graph(graph, rewrite, ctx.note_rebuilt)


def _first_firing(rules, anywhere, node: Node, ctx: RewriteContext, fired):
    for rule in (*rules, *anywhere):
        m = match_node(rule.pattern, node, ctx)
        if m is None:
            continue
        res = rule.replace(m)
        if res is None:
            continue
        outs = list(res) if isinstance(res, (tuple, list)) else [res]
        if len(outs) != len(node.outputs):
            raise GraphError(f"internal: rule {rule.name} returned {len(outs)} values for "
                             f"{node.op} with {len(node.outputs)} outputs")
        if any(o is not None and o.type != t for o, t in zip(outs, node.types)):
            continue  # a replacement must keep every type; decline rather than break users
        ctx.note_new(outs)
        for old, new in zip(node.outputs, outs):
            if new is not None:
                ctx.note_replaced(old, new)
        if fired is not None:
            fired[rule.name] = fired.get(rule.name, 0) + 1
        return outs
    return None


def replace_nodes(graph: Graph, builders: dict[int, Callable[[Callable[[Value], Value]],
                                                              Sequence[Value]]]) -> Graph:
    """Replace the nodes whose ids key ``builders``: each builder gets ``remap`` (old value ->
    its value in the new graph) and returns new values for the node's outputs. Nodes that
    only consumed replaced values are rebuilt; nothing else changes."""
    if not builders:
        return graph
    mapping: dict[int, Value] = {}

    def remap(v: Value) -> Value:
        return mapping.get(id(v), v)

    def step(node: Node, inputs: tuple) -> Sequence[Value] | None:
        builder = builders.get(id(node))
        return None if builder is None else builder(remap)

    return rebuild(graph, step, mapping)
