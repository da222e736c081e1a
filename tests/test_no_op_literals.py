"""Op knowledge lives in the registry: no pass, backend or front-end module compares
``node.op`` against a string literal (``node.op == "Relu"``, ``op in ("Add", "Mul")``,
``case "Conv":``); it asks the op's definition instead (``get_op(node.op).commutative``), or
matches a pattern (``op("Relu", x)``, :mod:`graphdl.passes.rewrite`). Rule tables that match
patterns (``*_RULES`` data) may name ops: that is what a pattern is. Source node kinds are
compared through ``graphdl.ir.INPUT``/``PARAM``/``CONST``, which are names, not literals.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("passes", "backends", "graphdl")


def _is_op_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "op"


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_literal(e) for e in node.elts)
    return False


def _rule_tables(tree: ast.Module) -> set[int]:
    """ids of the AST nodes inside module-level ``*_RULES = ...`` assignments."""
    inside: set[int] = set()
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else \
            [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id.endswith("_RULES") for t in targets):
            inside.update(id(n) for n in ast.walk(stmt))
    return inside


def op_literal_comparisons(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every comparison of ``.op`` against a string literal in ``source``,
    outside ``*_RULES`` tables."""
    tree = ast.parse(source, filename)
    exempt = _rule_tables(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_op_attr(s) for s in sides) and any(_is_literal(s) for s in sides):
                found.append(f"{filename}:{node.lineno}")
        elif isinstance(node, ast.Match) and _is_op_attr(node.subject):
            if any(isinstance(c.pattern, ast.MatchValue) and _is_literal(c.pattern.value)
                   or isinstance(c.pattern, ast.MatchOr) for c in node.cases):
                found.append(f"{filename}:{node.lineno}")
    return sorted(found, key=lambda hit: int(hit.rsplit(":", 1)[1]))


def test_the_checker_catches_planted_violations():
    planted = '''
def f(node, v):
    if node.op == "Relu":
        return 1
    if v.node.op in ("Add", "Mul"):
        return 2
    if "Conv" != node.op:
        return 3
    match node.op:
        case "Gemm":
            return 4
    return get_op(node.op).commutative and node.op == KIND
'''
    assert op_literal_comparisons(planted) == [
        "<source>:3", "<source>:5", "<source>:7", "<source>:9"]


def test_rule_tables_may_name_ops():
    source = '''
SIMPLIFY_RULES = [Rule("x", op("Mul"), lambda m: m.root.op == "Mul")]
OTHER = [lambda node: node.op == "Mul"]
'''
    assert op_literal_comparisons(source) == ["<source>:3"]


def test_no_module_compares_op_names():
    hits: list[str] = []
    checked = 0
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            hits += op_literal_comparisons(path.read_text(), rel)
            checked += 1
    assert checked > 50, f"only {checked} files checked: is it reading the right folders?"
    assert not hits, (
        f"node.op compared against string literals at {hits}: declare the property on the "
        "OpDef (graphdl/ops/registry.py) and ask get_op(...), or match a pattern "
        "(graphdl.passes.rewrite.op)")
