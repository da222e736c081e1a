"""Op cases for graphdl/ops/extra2.py (Range); tests/test_ops.py and test_onnx_ops.py run them."""
from __future__ import annotations

import numpy as np
import torch

from tests.op_case import OpCase

CASES = {
    "Range": [
        OpCase([np.array(1.0), np.array(4.2), np.array(0.5)], {"count": 7},
               torch=lambda s, l, d: torch.arange(s, l, d), id="float"),
        OpCase([np.array(10, np.int64), np.array(-3, np.int64), np.array(-4, np.int64)],
               {"count": 4}, torch=lambda s, l, d: torch.arange(s, l, d), id="int_negative"),
        OpCase([np.array(5, np.int32), np.array(2, np.int32), np.array(1, np.int32)],
               {"count": 0}, id="empty"),
    ],
}
