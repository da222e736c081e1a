"""Einsum (ONNX Einsum, numpy.einsum): an equation over one or more operands.

Attribute ``equation`` as written by the user (implicit output and ``...`` allowed). The VJP
of each operand is an einsum of the cotangent with the other operands onto that operand's
subscripts; letters only that operand has (summed away in the forward) are broadcast back.
Operands with a repeated letter (a diagonal, ``ii->i``) have no VJP.
"""
from __future__ import annotations

import string

import numpy as np

from graphdl.ir import GraphError, TensorType
from graphdl.ops.infer import same_dtype
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, lower, register

__all__ = ["einsum"]

_SPARE = string.ascii_uppercase[::-1]  # letters for ``...`` dims (ONNX uses lowercase ones)


def explicit(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The equation with ``...`` spelled out and the output written: (inputs, output)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"the equation names {len(terms)} operands, got {len(ranks)}")
    used = set(eq) - set(".,->")
    spare = [c for c in _SPARE + string.ascii_lowercase if c not in used]
    n_ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t),
                default=0)
    ell = "".join(spare[:n_ell])
    ins = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            k = r - len(t.replace("...", ""))
            t = t.replace("...", ell[n_ell - k:] if k else "")
        if len(t) != r:
            raise ValueError(f"term {t!r} does not match an operand of rank {r}")
        ins.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit: the ellipsis dims, then the letters seen once, in order
        counts = {c: "".join(ins).count(c) for c in set("".join(ins))}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return ins, out


def _einsum_infer(types, attrs):
    if not types:
        raise fail("Einsum", "needs at least one operand")
    dt = same_dtype("Einsum", types)
    try:
        ins, out = explicit(attrs["equation"], [t.rank for t in types])
    except ValueError as err:
        raise fail("Einsum", f"equation {attrs['equation']!r}: {err}", list(types)) from None
    dims: dict[str, object] = {}
    for term, t in zip(ins, types):
        for c, d in zip(term, t.shape):
            old = dims.get(c)
            if old is None or old == 1:
                dims[c] = d
            elif d != 1 and d != old:
                raise fail("Einsum", f"letter {c!r} has sizes {old} and {d} in "
                           f"{attrs['equation']!r}", list(types))
    missing = [c for c in out if c not in dims]
    if missing or len(set(out)) != len(out):
        raise fail("Einsum", f"output letters {out!r} must be distinct input letters",
                   list(types))
    return [TensorType(tuple(dims[c] for c in out), dt)]


def _einsum_kernel(xs, attrs, out):
    ins, o = explicit(attrs["equation"], [x.ndim for x in xs])
    dt = xs[0].dtype
    if dt.kind not in "biuf" or dt.itemsize < 2:  # bfloat16/float8: NumPy cannot einsum them
        xs = [x.astype(np.float32) for x in xs]
    y = np.einsum(f"{','.join(ins)}->{o}", *xs)
    y = np.asarray(y).astype(dt)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _einsum_vjp(F, node, grads):
    xs = list(node.inputs)
    ins, out = explicit(node.attrs["equation"], [x.ndim for x in xs])
    g = grads[0]
    result = []
    for i, (x, term) in enumerate(zip(xs, ins)):
        if len(set(term)) != len(term):
            raise GraphError(f"Einsum {node.attrs['equation']!r}: operand {i} repeats a "
                             "letter (a diagonal), which has no gradient in graphdl")
        others = [t for j, t in enumerate(ins) if j != i]
        avail = set(out).union(*others) if others else set(out)
        target = "".join(c for c in term if c in avail)
        eq = ",".join([out] + others) + "->" + target
        r = apply("Einsum", g, *(v for j, v in enumerate(xs) if j != i), equation=eq)
        lost = tuple(k for k, c in enumerate(term) if c not in avail)
        if lost:  # letters summed only over this operand: d sum_j x_j = 1 for each j
            r = F.expand_as(F.unsqueeze(r, lost), x)
        result.append(F.sum_to(r, x.shape) if tuple(r.shape) != tuple(x.shape) else r)
    return result


register(OpDef(name="Einsum", infer=_einsum_infer, kernel=_einsum_kernel, vjp=_einsum_vjp,
               attrs={"equation": Attr(str, REQUIRED, "the einsum subscripts")},
               onnx=lambda a, ti, to, o: lower("Einsum", len(ti), equation=a["equation"]),
               doc="Einstein summation over the operands (ONNX Einsum, numpy.einsum)."))


def einsum(equation: str, *operands):
    """Einstein summation, as numpy.einsum and ONNX Einsum define it."""
    return apply("Einsum", *operands, equation=str(equation))
