"""Algebraic simplification as rewrite rules (one rule list per concern).

Each rule states the identity it implements. Rules that change results only by rounding
(``x/c -> x*(1/c)``) stay well inside float32 tolerance; rules that would change results on
part of the domain are the classic ones users expect (``exp(log x) -> x``).
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import FLOAT_DTYPES, Graph, Value
from graphdl.ops.registry import INPUT, get_op
from graphdl.passes.rewrite import Match, Rule, any_value, apply_rules, const, constant_array, \
    match_value, op, uniform_value

_X = any_value("x")
# kinds of op, by what each op declares (graphdl.ops.registry.OpDef); no lists of names
_RESHAPES = lambda d: d.reshape  # noqa: E731  (data, like the rules)
_EXPANDS = lambda d: d.expand  # noqa: E731
_SHAPE_NOOPS = lambda d: d.reshape or d.expand  # noqa: E731
_BROADCASTING = lambda d: d.broadcasting  # noqa: E731
_ELEMENTWISE = lambda d: d.elementwise and not d.holds_program  # noqa: E731


def _keep_x(m: Match):
    """The captured ``x`` when it already has the root's type."""
    x = m["x"]
    return x if x.type == m.type else None


def _is_float(v: Value) -> bool:
    return v.dtype in FLOAT_DTYPES


# ---- identities ----------------------------------------------------------------------------

def _neg_x(m: Match):
    return m.op("Neg", m["x"]) if m["x"].type == m.type else None


def _dropout_identity(m: Match):
    node = m.root
    if node.attrs["training"] and node.attrs["rate"] != 0.0:
        return None
    if node.attrs["training"]:
        return (node.inputs[0], None, None)  # rate 0: y = x, but the seed still advances
    return (node.inputs[0], None, node.inputs[1])  # inference: y = x, the seed stays


def _reduce_noop(m: Match):
    node, x = m.root, m["x"]
    axes = node.attrs.get("axes")
    axes = range(x.ndim) if axes is None else [a % max(x.ndim, 1) for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        return None
    return x if x.type == m.type else _reshape_to(m, x)  # only size-1 axes: no reduction


def _identity_perm(m: Match):
    perm = m.root.attrs["perm"]
    return m["x"] if tuple(perm) == tuple(range(len(perm))) else None


def _where_same(m: Match):
    return _keep_x(m)


def _where_const_cond(m: Match):
    c = uniform_value(m["c"])
    if c is None:
        return None
    pick = m["a"] if c else m["b"]
    return pick if pick.type == m.type else None


IDENTITY_RULES = [
    Rule("mul_one", op("Mul", _X, const(value=1)), _keep_x),  # x*1 -> x
    Rule("add_zero", op("Add", _X, const(value=0)), _keep_x),  # x+0 -> x
    Rule("sub_zero", op("Sub", _X, const(value=0)), _keep_x),  # x-0 -> x
    Rule("zero_sub", op("Sub", const(value=0), _X), _neg_x),  # 0-x -> -x
    Rule("div_one", op("Div", _X, const(value=1)), _keep_x),  # x/1 -> x
    Rule("pow_one", op("Pow", _X, const(value=1)), _keep_x),  # x**1 -> x
    Rule("identity", op("Identity", _X), _keep_x),  # identity(x) -> x
    Rule("cast_same", op("Cast", _X), _keep_x),  # cast(x, x.dtype) -> x
    Rule("shape_noop", op(_SHAPE_NOOPS, _X), _keep_x),
    # ^ reshape(x, x.shape) -> x, expand(x, x.shape) -> x
    Rule("transpose_noop", op("Transpose", _X), _identity_perm),  # transpose(x, id) -> x
    Rule("shape_noop_like", op(("ReshapeLike", "ExpandAs"), _X, any_value()), _keep_x),
    # ^ reshape_like(x, y) -> x and expand_as(x, y) -> x when x already has y's shape
    Rule("reduce_noop", op(("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"), _X),
         _reduce_noop),  # sum over size-1 axes -> x (or a reshape)
    Rule("where_same", op("Where", any_value("c"), _X, _X), _where_same),  # where(c,x,x) -> x
    Rule("where_const", op("Where", const("c"), any_value("a"), any_value("b")),
         _where_const_cond),  # where(True, a, b) -> a; where(False, a, b) -> b
    Rule("concat_one", op("Concat", _X), _keep_x),  # concat([x]) -> x
]


# ---- algebra -------------------------------------------------------------------------------

def _const_combine(fn):
    def replace(m: Match):
        x, c1, c2 = m["x"], constant_array(m["c1"]), constant_array(m["c2"])
        if c1.dtype != c2.dtype or not _is_float(x):
            return None
        with np.errstate(all="ignore"):
            folded = fn(c1, c2).astype(c1.dtype)
        if folded.size > 4096:
            return None
        return m.try_op(m.root.op, x, m.const(folded))
    return replace


def _div_const(m: Match):
    x, c = m["x"], constant_array(m["c"])
    if not _is_float(x) or c.size > 4096 or not np.all(c != 0):
        return None
    return m.try_op("Mul", x, m.const((1 / c).astype(c.dtype)))


def _neg_mul_const(m: Match):
    c = constant_array(m["c"])
    return m.try_op("Mul", m["x"], m.const(-c)) if c.size <= 4096 else None


ALGEBRA_RULES = [
    Rule("double_neg", op("Neg", op("Neg", _X)), _keep_x),  # --x -> x
    Rule("neg_sub", op("Neg", op("Sub", any_value("a"), any_value("b"))),
         lambda m: m.op("Sub", m["b"], m["a"])),  # -(a-b) -> b-a
    Rule("add_neg", op("Add", any_value("a"), op("Neg", any_value("b"))),
         lambda m: m.try_op("Sub", m["a"], m["b"])),  # a + -b -> a - b
    Rule("sub_neg", op("Sub", any_value("a"), op("Neg", any_value("b"))),
         lambda m: m.try_op("Add", m["a"], m["b"])),  # a - -b -> a + b
    Rule("mul_neg_neg", op("Mul", op("Neg", any_value("a")), op("Neg", any_value("b"))),
         lambda m: m.try_op("Mul", m["a"], m["b"])),  # (-a)*(-b) -> a*b
    Rule("mul_minus_one", op("Mul", _X, const(value=-1)), _neg_x),  # x*-1 -> -x
    Rule("exp_log", op("Exp", op("Log", _X)), _keep_x),  # exp(log x) -> x
    Rule("log_exp", op("Log", op("Exp", _X)), _keep_x),  # log(exp x) -> x
    Rule("pow_two", op("Pow", _X, const(value=2)),
         lambda m: m.op("Mul", m["x"], m["x"]) if m["x"].type == m.type else None),  # x**2 -> x*x
    Rule("pow_half", op("Pow", _X, const(value=0.5)),
         lambda m: m.op("Sqrt", m["x"]) if m["x"].type == m.type else None),  # x**.5 -> sqrt x
    Rule("div_const", op("Div", _X, const("c")), _div_const),  # x/c -> x*(1/c)
    Rule("mul_consts", op("Mul", op("Mul", _X, const("c1")), const("c2")),
         _const_combine(np.multiply)),  # (x*c1)*c2 -> x*(c1*c2)
    Rule("add_consts", op("Add", op("Add", _X, const("c1")), const("c2")),
         _const_combine(np.add)),  # (x+c1)+c2 -> x+(c1+c2)
    Rule("neg_mul_const", op("Neg", op("Mul", _X, const("c"))), _neg_mul_const),
    # ^ -(x*c) -> x*(-c)
]


# ---- shapes --------------------------------------------------------------------------------

def _reshape_to(m: Match, x: Value):
    """``x`` reshaped to the root's shape, when a static spec (one symbolic dim at most)
    can say it."""
    dims = m.type.shape
    if sum(1 for d in dims if not isinstance(d, int)) > 1:
        return None
    spec = tuple(d if isinstance(d, int) else -1 for d in dims)
    out = m.try_op("Reshape", x, shape=spec)
    return out if out is not None and out.type == m.type else None


def _reshape_chain(m: Match):
    x = m["x"]
    return x if x.type == m.type else _reshape_to(m, x)


def _transpose_chain(m: Match):
    inner, outer = m["inner"].node.attrs["perm"], m.root.attrs["perm"]
    perm = tuple(int(inner[p]) for p in outer)
    if perm == tuple(range(len(perm))):
        return m["x"]
    return m.op("Transpose", m["x"], perm=perm)


def _static_like(m: Match):
    like = m["like"]
    if get_op(m.root.op).reshape:  # reshape_like(x, like) -> reshape(x, like.shape)
        return _reshape_to(m, m["x"])
    if not all(isinstance(d, int) for d in like.shape):
        return None
    return m.try_op("Expand", m["x"], shape=tuple(like.shape))  # no longer keeps `like` alive


def _expand_chain(m: Match):
    root = m.root  # the outer expand, over x instead (its target shape, as an attr or a like)
    return m.try_op(root.op, m["x"], *root.inputs[1:], **root.attrs)


def _unsqueeze_expand(m: Match):
    e = m["e"].node
    a, axes = e.inputs[0], m.root.attrs["axes"]
    if a.ndim != e.types[0].rank:
        return None
    small = m.op("Unsqueeze", a, axes=axes)
    like = m.get("like")
    if like is not None:
        return m.try_op("ExpandAs", small, m.op("Unsqueeze", like, axes=axes))
    if not all(isinstance(d, int) for d in m.type.shape):
        return None
    return m.try_op("Expand", small, shape=tuple(m.type.shape))


SHAPE_RULES = [
    Rule("reshape_chain", op(_RESHAPES, op(_RESHAPES, _X)), _reshape_chain),
    # ^ reshape(reshape(x)) -> reshape(x); also flatten/squeeze/unsqueeze chains
    Rule("transpose_chain", op("Transpose", op("Transpose", _X, capture="inner")),
         _transpose_chain),  # transpose(transpose(x, p), q) -> transpose(x, p[q])
    Rule("like_static", op(("ReshapeLike", "ExpandAs"), _X, any_value("like")), _static_like),
    # ^ expand_as(x, like) -> expand(x, like.shape) when that shape is static
    Rule("expand_chain", op(_EXPANDS, op(_EXPANDS, _X)), _expand_chain),
    # ^ expand(expand(x, s1), s2) -> expand(x, s2)
    Rule("unsqueeze_expand", op("Unsqueeze", op("Expand", capture="e")), _unsqueeze_expand),
    # ^ unsqueeze(expand(a, s)) -> expand(unsqueeze(a), s')
    Rule("unsqueeze_expand_as", op("Unsqueeze", op("ExpandAs", _X, any_value("like"),
                                                   capture="e")), _unsqueeze_expand),
    # ^ unsqueeze(expand_as(a, like)) -> expand_as(unsqueeze(a), unsqueeze(like))
]


# ---- gradient-graph cleanups ---------------------------------------------------------------

def _broadcast_source(v: Value) -> Value | None:
    """What ``v`` is a broadcast of: the input of an Expand, or a scalar 0 for ZerosLike."""
    if get_op(v.node.op).expand:
        return v.node.inputs[0]
    return None


def _absorb_expand(m: Match):
    root = m.root
    swaps = []
    for i, v in enumerate(root.inputs):
        src = _broadcast_source(v)
        if src is not None:
            swaps.append((i, src))
        elif get_op(v.node.op).fill is not None:
            swaps.append((i, m.const(np.full((), get_op(v.node.op).fill, v.dtype))))
    if not swaps:
        return None
    for chosen in (swaps, *([s] for s in swaps)) if len(swaps) > 1 else (swaps,):
        ins = list(root.inputs)
        for i, src in chosen:
            ins[i] = src
        out = m.try_op(root.op, *ins, **root.attrs)
        if out is not None and out.type == m.type:
            return out  # broadcasting does the expand without materializing it
    return None


def _sink_expand(m: Match):
    root = m.root
    pos = [i for i, v in enumerate(root.inputs) if get_op(v.node.op).expand]
    if len(pos) != 1:
        return None
    i = pos[0]
    e = root.inputs[i].node
    ins = list(root.inputs)
    ins[i] = e.inputs[0]
    small = m.try_op(root.op, *ins, **root.attrs)
    if small is None or small.shape == m.type.shape:
        return None
    as_like = match_value(_EXPAND_AS, e.outputs[0], {})
    if as_like is not None:
        like = as_like["like"]
        return m.try_op("ExpandAs", small, like) if like.shape == m.type.shape else None
    if not all(isinstance(d, int) for d in m.type.shape):
        return None
    return m.try_op("Expand", small, shape=tuple(m.type.shape))


_EXPAND_AS = op("ExpandAs", _X, any_value("like"))  # expand_as(x, like)
_RELU = op("Relu", _X)  # relu(x)


def _relu_mask(m: Match):
    x = m["x"]
    if not _is_float(x):
        return None
    for node in m.consumers(x):
        if match_value(_RELU, node.outputs[0], {"x": x}):
            # x > 0 exactly where relu(x) > 0, so x itself can die after the relu
            return m.op("Greater", node.outputs[0], m.const(np.zeros((), x.dtype)))
    return None


def _numel_from_input(m: Match):
    x, axes = m["x"], m.root.attrs["axes"]
    if x.node.op == INPUT or m.ctx is None:
        return None
    dims = [x.shape[a] for a in axes]
    symbols = [d for d in dims if isinstance(d, str)]
    if not symbols or len(set(symbols)) != len(symbols):
        return None
    static = int(np.prod([d for d in dims if isinstance(d, int)]))
    for u in m.ctx.graph.inputs:
        if all(u.shape.count(d) == 1 for d in symbols):
            n = m.op("Numel", u, axes=tuple(u.shape.index(d) for d in symbols))
            # the count depends on x's shape only: read it off a graph input, so x may die
            return n if static == 1 else m.op("Mul", n, m.const(np.array(static, n.dtype)))
    return None


GRADIENT_RULES = [
    Rule("absorb_expand", op(_BROADCASTING), _absorb_expand),  # a*expand(b) -> a*b
    Rule("sink_expand", op(_ELEMENTWISE), _sink_expand),
    # ^ expand(a)*b -> expand(a*b) when b is as small as a
    Rule("relu_mask", op("Greater", _X, const(value=0)), _relu_mask),
    # ^ x > 0 -> relu(x) > 0 where relu(x) is computed anyway
    Rule("numel_from_input", op("Numel", _X), _numel_from_input),
    # ^ numel(x, axes) -> numel(input, axes') * k: same count, without keeping x alive
]

SIMPLIFY_RULES = IDENTITY_RULES + ALGEBRA_RULES + SHAPE_RULES + GRADIENT_RULES

INFERENCE_RULES = [
    Rule("dropout_off", op("Dropout"), _dropout_identity),  # dropout(x) -> x in inference
]


def simplify(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Apply every simplification rule once over the graph."""
    return apply_rules(graph, SIMPLIFY_RULES, fired)


def remove_dropout(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Replace dropout in inference form (or with rate 0) by its input."""
    return apply_rules(graph, INFERENCE_RULES, fired)
