"""Dimensions: static ints, symbols (``"N"``) and expressions of symbols (``N*197``).

A dim in a :class:`graphdl.ir.TensorType` is one of
- an ``int``: known when the graph is built;
- a ``str``: a symbol bound at run time from the fed arrays (the batch ``"N"``, a sequence
  length ``"T"``);
- a :class:`DimExpr`: a polynomial with integer coefficients over symbols, such as ``N*197``
  or ``2*N*T + 1``. It is a ``str`` subclass whose text is its canonical form, so every place
  that treats a str dim as symbolic (equality, hashing, broadcasting, ONNX ``dim_param``)
  keeps working, and an exported ``dim_param`` parses back to the same expression.

Why a small polynomial type rather than sympy: the shape subgraphs exporters write (Shape,
Gather, Concat, Add/Sub/Mul/Div on dims) need sums and products of symbols and exact division
by an int or a monomial, nothing more; the type is ~150 lines, hashes and compares as a
string (so CSE and type checks stay cheap), and sympy is not a dependency (onnxslim's use
of it costs seconds on large files). A division that is not exact, or a Mod of a symbol,
is not representable and the importer says so.
"""
from __future__ import annotations

import re
from typing import Mapping, Union

Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers
Poly = dict[Monomial, int]


class DimExpr(str):
    """A dim that is an integer polynomial over symbols; compares and hashes as its text."""

    poly: Poly

    def __new__(cls, poly: Poly) -> "DimExpr":
        clean = {m: c for m, c in poly.items() if c}
        obj = super().__new__(cls, _render(clean))
        obj.poly = clean
        return obj

    @property
    def symbols(self) -> set[str]:
        """The symbols the expression uses."""
        return {s for m in self.poly for s in m}


DimLike = Union[int, str, DimExpr]


def _render(poly: Poly) -> str:
    if not poly:
        return "0"
    parts = []
    for mono in sorted(poly, key=lambda m: (-len(m), m)):
        c = poly[mono]
        body = "*".join(mono)
        if not body:
            text = str(abs(c))
        elif abs(c) == 1:
            text = body
        else:
            text = f"{abs(c)}*{body}"
        parts.append(("- " if c < 0 else "+ ") + text)
    out = " ".join(parts)
    return out[2:] if out.startswith("+ ") else "-" + out[2:]


def poly_of(d: DimLike) -> Poly:
    """The polynomial of a dim (ints and plain symbols included)."""
    if isinstance(d, DimExpr):
        return dict(d.poly)
    if isinstance(d, str):
        return {(d,): 1}
    return {(): int(d)} if int(d) else {}


def simplify(poly: Poly) -> DimLike:
    """The simplest dim for a polynomial: an int, a plain symbol, or a DimExpr."""
    poly = {m: c for m, c in poly.items() if c}
    if not poly:
        return 0
    if set(poly) == {()}:
        return poly[()]
    if len(poly) == 1:
        (mono, c), = poly.items()
        if c == 1 and len(mono) == 1:
            return mono[0]
    return DimExpr(poly)


def add(a: DimLike, b: DimLike) -> DimLike:
    """a + b."""
    out = poly_of(a)
    for m, c in poly_of(b).items():
        out[m] = out.get(m, 0) + c
    return simplify(out)


def neg(a: DimLike) -> DimLike:
    """-a."""
    return simplify({m: -c for m, c in poly_of(a).items()})


def sub(a: DimLike, b: DimLike) -> DimLike:
    """a - b."""
    return add(a, neg(b))


def mul(a: DimLike, b: DimLike) -> DimLike:
    """a * b."""
    out: Poly = {}
    for ma, ca in poly_of(a).items():
        for mb, cb in poly_of(b).items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return simplify(out)


def floordiv(a: DimLike, b: DimLike) -> DimLike | None:
    """a // b when it is exact in every term (b an int or a monomial); else None."""
    pb = poly_of(b)
    if len(pb) != 1:
        return None
    (mb, cb), = pb.items()
    if cb == 0:
        return None
    pa = poly_of(a)
    if not mb and all(not m for m in pa):  # plain integers
        return simplify({(): pa.get((), 0) // cb})
    out: Poly = {}
    for m, c in pa.items():
        rest = list(m)
        for s in mb:
            if s not in rest:
                return None
            rest.remove(s)
        if c % cb:
            return None
        out[tuple(rest)] = c // cb
    return simplify(out)


def product(dims) -> DimLike:
    """The product of dims (1 for none)."""
    out: DimLike = 1
    for d in dims:
        out = mul(out, d)
    return out


def is_static(d: DimLike) -> bool:
    """Whether the dim is a known int."""
    return isinstance(d, int) and not isinstance(d, bool)


def evaluate(d: DimLike, bindings: Mapping[str, int] | None, default: int | None = None) -> int:
    """The size of a dim under ``bindings``; unbound symbols take ``default`` (or raise)."""
    if isinstance(d, int):
        return d
    bindings = bindings or {}
    total = 0
    for mono, c in poly_of(d).items():
        term = c
        for s in mono:
            if s in bindings:
                term *= int(bindings[s])
            elif default is not None:
                term *= default
            else:
                raise KeyError(f"symbolic dim {s!r} (in {d}) is not bound")
        total += term
    return total


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][\w.:/]*)|(.))")


def parse(text: str) -> DimLike:
    """A dim from its text (an ONNX ``dim_param``): ``"N"``, ``"N*197"``, ``"2*N*T + 1"``.
    Text that is not such an expression stays a plain symbol."""
    if not any(ch in text for ch in "*+-"):
        return text
    terms: list[tuple[int, DimLike]] = []
    sign, expect_operand = 1, True
    factor: DimLike = 1
    for num, name, other in _TOKEN.findall(text):
        if num or name:
            if not expect_operand:
                return text
            factor = mul(factor, int(num) if num else name)
            expect_operand = False
        elif other == "*" and not expect_operand:
            expect_operand = True
        elif other in "+-" and (not expect_operand or (other == "-" and factor == 1)):
            if not expect_operand:
                terms.append((sign, factor))
                factor = 1
            sign = 1 if other == "+" else -1
            expect_operand = True
        elif other.strip():
            return text
    if expect_operand:
        return text
    terms.append((sign, factor))
    out: DimLike = 0
    for s, f in terms:
        out = add(out, f) if s > 0 else sub(out, f)
    # only text in canonical form is an expression (a dim_param "seq-len" stays a symbol)
    return out if str(out) == text else text
