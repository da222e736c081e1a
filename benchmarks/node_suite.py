"""ONNX's backend node suite, counted for graphdl, ONNX Runtime CPU and onnx.reference in one run.

Every runtime gets the same cases from ``onnx.backend.test.loader.load_model_tests(kind="node")``
and the same comparison as ONNX's runner (graphdl.backends.onnx_node_suite). Writes pass
counts, failure kinds, the cases graphdl fails that ONNX Runtime passes, and the reverse.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/node_suite.py``.
"""
from __future__ import annotations

import argparse
import platform
import warnings

import onnx
import onnxruntime

from graphdl.atomic import write_json
from graphdl.backends.onnx_node_suite import RUNTIMES, node_cases, run_case, summarize


def main(argv=None) -> dict:
    """Count every runtime on the node suite; write and return the JSON results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/node_suite.json")
    p.add_argument("--runtimes", nargs="*", default=list(RUNTIMES))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    onnxruntime.set_default_logger_severity(4)
    cases = node_cases()
    results = {name: [] for name in args.runtimes}
    for case in cases:  # interleaved: every runtime sees the same case back to back
        for name in args.runtimes:
            results[name].append(run_case(RUNTIMES[name], case))
    out = {
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(), "cases": len(cases),
        "runtimes": {name: summarize(rs) for name, rs in results.items()},
    }
    if "graphdl" in results and "onnxruntime_cpu" in results:
        pairs = list(zip(results["graphdl"], results["onnxruntime_cpu"]))
        out["graphdl_fails_ort_passes"] = sorted(g.name for g, o in pairs
                                                 if o.passed and not g.passed)
        out["graphdl_passes_ort_fails"] = sorted(g.name for g, o in pairs
                                                 if g.passed and not o.passed)
    write_json(args.out, out)
    for name, s in out["runtimes"].items():
        print(f"{name:18s} {s['passed']:5d}/{s['total']} passed  ({s['seconds']} s)")
    return out


if __name__ == "__main__":
    main()
