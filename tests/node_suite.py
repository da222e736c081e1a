"""The exclusion list of ONNX's backend node suite for graphdl, and the tool that rewrites it.

``tests/onnx_node_exclusions.txt`` lists every node-suite case graphdl does not pass, under a
``## reason`` heading per group. ``tests/test_onnx_node_suite.py`` fails when a case outside
the list fails, or when the pass count drops below ``PASS_FLOOR``.

After making cases pass, regenerate the list (reasons come from the failures' errors):
    python -m tests.node_suite --update
"""
from __future__ import annotations

import os
import re
import sys

import pytest

EXCLUSIONS_PATH = os.path.join(os.path.dirname(__file__), "onnx_node_exclusions.txt")
# the test fails below this many passing cases (raise it as cases start passing)
PASS_FLOOR = 1749
# where the node-suite test leaves its summary for the terminal report (tests/conftest.py)
SUMMARY_KEY = pytest.StashKey[dict]()

_HEADER = """\
# ONNX backend node-suite cases that graphdl does not pass, grouped by reason.
# Read by tests/test_onnx_node_suite.py: a failing case outside this list fails the test.
# Regenerate after fixing cases: python -m tests.node_suite --update
"""


def load_exclusions(path: str = EXCLUSIONS_PATH) -> dict[str, str]:
    """Case name -> the reason it is excluded."""
    out: dict[str, str] = {}
    reason = "unspecified"
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("## "):
                reason = line[3:].strip()
            elif line and not line.startswith("#"):
                out[line] = reason
    return out


_PATTERNS = [
    (r"ONNX op '(\w+)' is not supported by graphdl's importer",
     "no import rule for {0} (graphdl has no such op yet)"),
    (r"op ([\w.]+) is not supported by graphdl \(only the ONNX domain",
     "op {0} outside the default ONNX domain"),
    (r"has dtype (\w+), which graphdl does not support", "dtype {0} is not supported"),
    (r"\((\w+)\): input '(\w+)' must be a constant",
     "{0} with a run-time '{1}' input (needs run-time shape inputs)"),
    (r"\((\w+)\): .*over a symbolic shape", "{0} over a symbolic shape"),
]


def reason_for(error: str, ops: list[str]) -> str:
    """A short, groupable reason for one failure."""
    for pattern, template in _PATTERNS:
        m = re.search(pattern, error)
        if m:
            return template.format(*m.groups())
    kind = error.split(":")[0]
    shown = "/".join(sorted(set(ops))[:3])
    if kind == "AssertionError":
        return f"wrong result from graphdl on {shown}"
    if kind in ("KeyError", "IndexError", "TypeError", "AttributeError"):
        return f"crash ({kind}) importing or running {shown}"
    message = re.sub(r" \(created at [^)]*\)", "", error.split(":", 1)[-1])  # no paths
    message = re.sub(r"'[^']*'|\d+", "_", message).strip()[:90]
    return f"{kind} on {shown}: {message}"


def write_exclusions(path: str = EXCLUSIONS_PATH) -> tuple[int, int]:
    """Run the suite for graphdl and rewrite the list from its failures; (passed, total)."""
    from graphdl.backends.onnx_node_suite import graphdl_prepare, node_cases, run_case

    cases = node_cases()
    groups: dict[str, list[str]] = {}
    passed = 0
    for case in cases:
        r = run_case(graphdl_prepare, case)
        if r.passed:
            passed += 1
            continue
        ops = [n.op_type for n in case.model.graph.node]
        groups.setdefault(reason_for(r.error, ops), []).append(case.name)
    lines = [_HEADER]
    for reason in sorted(groups, key=lambda k: (-len(groups[k]), k)):
        lines.append(f"\n## {reason}\n")
        lines.extend(f"{name}\n" for name in sorted(groups[reason]))
    from graphdl.atomic import write_text
    write_text(path, "".join(lines))
    return passed, len(cases)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    p, t = write_exclusions()
    print(f"graphdl passes {p}/{t} node-suite cases; {t - p} excluded in {EXCLUSIONS_PATH}")
