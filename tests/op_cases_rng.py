"""Op test cases for the counter-based RNG (graphdl/ops/counter_rng.py): CounterUniform.

Its draws are integer arithmetic, so the NumPy kernel, ONNX Runtime and onnx.reference agree
bit for bit (tests/test_onnx_ops.py); tests/test_counter_rng.py checks the statistics.
"""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, randn

CASES = {"CounterUniform": [
    OpCase([randn((3, 4, 5), 190), np.array(7, np.int64)], id="rank3"),
    OpCase([np.zeros((2, 9), np.int64), np.array(-1, np.int64)], id="int-like-negative-seed"),
    OpCase([randn((), 191), np.array(2**62, np.int64)], id="scalar"),
    OpCase([randn((0, 4), 192), np.array(3, np.int64)], id="empty"),
]}
