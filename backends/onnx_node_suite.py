"""ONNX's backend node suite, case by case, for any runtime (graphdl, ONNX Runtime, onnx.reference).

The cases come from ``onnx.backend.test.loader.load_model_tests(kind="node")``: each holds
its model and its data sets (inputs and expected outputs) in memory. :func:`run_case`
prepares the model with a runtime, runs every data set and compares with the tolerances and
checks of ONNX's own runner (``Runner.assert_similar_outputs``). The project's test runs it
for graphdl; ``benchmarks/node_suite.py`` runs it for all three runtimes in one process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import onnx
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

from graphdl.backends.onnx_backend import GraphdlBackend

Prepare = Callable[[onnx.ModelProto], Any]  # model -> object with .run(list of inputs)


@dataclass(frozen=True)
class CaseResult:
    """How one case went: ``passed``, or the failure's exception type and first line."""

    name: str
    passed: bool
    error: str = ""
    seconds: float = 0.0


def node_cases() -> list:
    """ONNX's node test cases (the loader's ``TestCase`` tuples), sorted by name."""
    return sorted(load_model_tests(kind="node"), key=lambda c: c.name)


def _tensor(item: Any) -> Any:
    """Case data as NumPy (the loader may hold TensorProtos)."""
    return numpy_helper.to_array(item) if isinstance(item, onnx.TensorProto) else item


def run_case(prepare: Prepare, case) -> CaseResult:
    """Prepare the case's model with ``prepare``, run every data set and compare, as ONNX's
    own runner does."""
    start = time.perf_counter()
    try:
        rep = prepare(case.model)
        for ins, expected in case.data_sets:
            outs = list(rep.run([_tensor(x) for x in ins]))
            Runner.assert_similar_outputs([_tensor(x) for x in expected], outs,
                                          rtol=case.rtol, atol=case.atol,
                                          model_dir=case.name)
    except Exception as err:  # noqa: BLE001  (a case fails in any way a runtime can fail)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        return CaseResult(case.name, False, f"{type(err).__name__}: {first}",
                          time.perf_counter() - start)
    return CaseResult(case.name, True, "", time.perf_counter() - start)


def run_suite(prepare: Prepare, cases: Iterable | None = None) -> list[CaseResult]:
    """Every case's result, in the loader's (sorted) order."""
    return [run_case(prepare, c) for c in (node_cases() if cases is None else cases)]


def graphdl_prepare(model: onnx.ModelProto):
    """graphdl: import, then the NumPy executor."""
    return GraphdlBackend.prepare(model)


class _OrtRep:
    def __init__(self, model: onnx.ModelProto):
        import onnxruntime as ort  # lazy: a peer runtime, ~1 s to load; only its runs need it

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # the suite expects failures; keep them quiet
        self.sess = ort.InferenceSession(model.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]

    def run(self, inputs: list) -> list:
        return self.sess.run(None, dict(zip(self.names, inputs)))


class _ReferenceRep:
    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator  # lazy: ~0.5 s; only its runs need it

        self.ref = ReferenceEvaluator(model)
        inits = {t.name for t in model.graph.initializer}
        self.names = [i.name for i in model.graph.input if i.name not in inits]

    def run(self, inputs: list) -> list:
        return self.ref.run(None, dict(zip(self.names, inputs)))


RUNTIMES: dict[str, Prepare] = {
    "graphdl": graphdl_prepare,
    "onnxruntime_cpu": _OrtRep,
    "onnx_reference": _ReferenceRep,
}


def summarize(results: list[CaseResult]) -> dict:
    """Pass count, total and the failures grouped by their first error words."""
    groups: dict[str, int] = {}
    for r in results:
        if not r.passed:
            key = r.error.split(":")[0]
            groups[key] = groups.get(key, 0) + 1
    return {"passed": sum(r.passed for r in results), "total": len(results),
            "failure_kinds": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "seconds": round(sum(r.seconds for r in results), 2)}

