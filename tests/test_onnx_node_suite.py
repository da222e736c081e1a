"""ONNX's backend node suite against graphdl (import + NumPy executor), with its pass count.

Every case graphdl fails sits in ``tests/onnx_node_exclusions.txt`` with its reason; the
test fails when any other case fails or the pass count drops below ``PASS_FLOOR``. The count
is printed in pytest's terminal summary (tests/conftest.py).
"""
import warnings

import onnx.backend.test

from graphdl.backends.onnx_backend import GraphdlBackend
from graphdl.backends.onnx_node_suite import graphdl_prepare, node_cases, run_case, summarize
from tests.node_suite import PASS_FLOOR, SUMMARY_KEY, load_exclusions


def _cases():
    with warnings.catch_warnings():  # ONNX's case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        return node_cases()


def test_node_suite_pass_count(request):
    excluded = load_exclusions()
    cases = _cases()
    results = [run_case(graphdl_prepare, c) for c in cases]
    summary = summarize(results)
    summary["excluded"] = len(excluded)
    summary["excluded_now_passing"] = sorted(r.name for r in results
                                             if r.passed and r.name in excluded)
    request.config.stash[SUMMARY_KEY] = summary
    unexpected = [f"{r.name}: {r.error}" for r in results
                  if not r.passed and r.name not in excluded]
    assert not unexpected, "node-suite cases failing outside the exclusion list:\n" + \
        "\n".join(unexpected[:40])
    crashes = [f"{r.name}: {r.error}" for r in results if not r.passed and
               r.error.split(":")[0] in ("KeyError", "IndexError", "TypeError", "AttributeError")]
    assert not crashes, "bare exceptions instead of OnnxImportError:\n" + "\n".join(crashes[:20])
    assert summary["passed"] >= PASS_FLOOR, \
        f"graphdl passes {summary['passed']} node-suite cases, below the floor {PASS_FLOOR}"
    names = {c.name for c in cases}
    stale = sorted(set(excluded) - names)
    assert not stale, f"exclusions name cases the suite does not have: {stale[:10]}"


def test_backend_interface_runs_a_node():
    import numpy as np
    from onnx import helper

    node = helper.make_node("Relu", ["x"], ["y"])
    x = np.array([[-1.0, 2.0]], np.float32)
    (y,) = GraphdlBackend.run_node(node, [x])
    np.testing.assert_array_equal(y, [[0.0, 2.0]])
    assert GraphdlBackend.supports_device("CPU") and not GraphdlBackend.supports_device("CUDA")


def test_onnx_backend_test_collects_against_graphdl():
    # ONNX's own BackendTest builds unittest cases over graphdl; the count above runs them
    bt = onnx.backend.test.BackendTest(GraphdlBackend, __name__)
    bt.include(r"^test_relu_cpu$")
    bt.include(r"^test_flatten_axis0_cpu$")
    import io
    import unittest

    result = unittest.TextTestRunner(verbosity=0, stream=io.StringIO()).run(bt.test_suite)
    ran = result.testsRun - len(result.skipped)  # cases outside include() are skipped
    assert ran == 2 and result.wasSuccessful(), result.failures + result.errors
