"""The pass benchmark suite (same as ``graphdl bench``): what graphdl's passes buy per zoo
model in nodes, memory and time, against ONNX Runtime's basic optimizer and onnx-simplifier.

Run with OPENBLAS_CORETYPE unset, e.g.
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_passes.py \
        --out bench_out/bench_passes.json
Writes JSON, Markdown and PNG charts; see ``--help`` for options.
"""
from __future__ import annotations

import sys

from graphdl.bench import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
