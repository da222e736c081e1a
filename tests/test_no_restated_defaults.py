"""Attribute defaults live in the op's schema (``OpDef.attrs``), which ``registry.build``
fills in once, so an op module reads ``attrs["name"]``. A call ``attrs.get("name", 0)`` in
``graphdl/ops`` restates a declared default (or, worse, disagrees with it); this test finds
every such call on an attrs dict (``attrs``, ``a``, ``node.attrs``) whose key some op declares.
"""
from __future__ import annotations

import ast
from pathlib import Path

import graphdl  # noqa: F401  (registers every op)
from graphdl.ops.registry import REGISTRY

OPS_DIR = Path(graphdl.__file__).resolve().parent / "ops"


def _declared() -> set[str]:
    return {key for op in REGISTRY.values() for key in (op.attrs or {})}


def _is_attrs_dict(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("attrs", "a") or \
        isinstance(node, ast.Attribute) and node.attr == "attrs"


def restated_defaults(source: str, declared: set[str], filename: str = "<source>") -> list[str]:
    """``file:line: call`` for every ``<attrs>.get("key", default)`` whose key is declared."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and len(node.args) == 2
                and _is_attrs_dict(node.func.value) and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in declared):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_catches_planted_violations():
    src = ("def k(xs, attrs, out):\n    return attrs.get('axis', 0)\n"
           "def v(F, node, g):\n    return node.attrs.get('axis', 0), node.attrs['axis']\n"
           "def ok(d):\n    return d.get('axis', 0), attrs.get('undeclared', 1)\n")
    hits = restated_defaults(src, {"axis"}, "planted.py")
    assert hits == ["planted.py:2: attrs.get('axis', 0)",
                    "planted.py:4: node.attrs.get('axis', 0)"], hits


def test_the_schema_has_keys_to_check():
    assert {"axis", "keepdims", "reduction", "group"} <= _declared()


def test_no_op_module_restates_a_declared_default():
    declared = _declared()
    hits = [hit for path in sorted(OPS_DIR.glob("*.py"))
            for hit in restated_defaults(path.read_text(), declared, path.name)]
    assert not hits, ("read attrs['name']: registry.build fills declared defaults; restated "
                      "here:\n" + "\n".join(hits))
