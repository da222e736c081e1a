"""Every registered op through ONNX: the NumPy executor vs ONNX Runtime (CPU) vs
``onnx.reference.ReferenceEvaluator``, over the op case tables, in float32 within 1e-5.

Cases marked ``onnx=False`` (random dropout masks) are still exported and checked by
``onnx.checker``; only the runtime comparison is skipped.
"""
from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import graphdl as gd
import graphdl.passes  # noqa: F401  (fused ops register themselves with the passes)
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.ops.registry import REGISTRY, LoweringError, apply
from tests.op_case import REFUSED_LOWERINGS, case_params, load_cases

TOL = 1e-5


CASES = load_cases()
OPS = sorted(name for name, op in REGISTRY.items() if not op.source)
CASE_PARAMS = case_params(CASES)


def _float32(case) -> list[np.ndarray]:
    return [np.asarray(a).astype(np.float32) if np.asarray(a).dtype.kind == "f"
            else np.asarray(a) for a in case.inputs]


def _graph(op: str, case, arrays) -> gd.Graph:
    ins = [gd.input(f"in{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = apply(op, *ins, **case.attrs)
    return gd.Graph(ins, list(outs) if isinstance(outs, tuple) else [outs], name=op)


def _close(name: str, got: np.ndarray, want: np.ndarray, case) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    np.testing.assert_allclose(got, want, rtol=max(TOL, case.rtol), atol=TOL * scale,
                               err_msg=name)


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_lowering_and_a_case(op):
    """A registered op without an ONNX lowering or without a case to check it fails."""
    assert callable(REGISTRY[op].onnx), f"op {op} has no ONNX lowering"
    assert CASES.get(op), f"op {op} has no case in tests/op_cases*.py to check its lowering"


@pytest.mark.parametrize("op,case", CASE_PARAMS)
def test_op_matches_ort_and_reference(op, case):
    """NumPy executor == ORT CPU == onnx.reference on every case (float32)."""
    arrays = _float32(case)
    graph = _graph(op, case, arrays)
    if REGISTRY[op].collective:  # MPI collectives have no single-process ONNX file
        with pytest.raises(LoweringError, match=f"{op} is a collective across MPI ranks"):
            to_onnx(graph)
        return
    if op in REFUSED_LOWERINGS:  # refuses, naming the op (reason in tests/op_case.py)
        with pytest.raises(LoweringError, match=op):
            to_onnx(graph, opset=case.opset)
        return
    model = to_onnx(graph, opset=case.opset)
    onnx.checker.check_model(model, full_check=True)
    if not case.onnx:
        return
    want = NumpyExecutor(graph).run(arrays)
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    got_ort = session.run(None, feeds)
    got_ref = ReferenceEvaluator(model).run(None, feeds)
    for i, w in enumerate(want):
        _close(f"{op} output {i} (ORT)", got_ort[i], w, case)
        _close(f"{op} output {i} (reference)", got_ref[i], w, case)
