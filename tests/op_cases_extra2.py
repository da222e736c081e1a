"""Op cases for graphdl/ops/extra2.py (Range, CenterCropPad); tests/test_ops.py and test_onnx_ops.py run them."""
from __future__ import annotations

import numpy as np
import torch

from tests.op_case import OpCase, rng

_img = rng(0).standard_normal((3, 5, 4))

CASES = {
    "Range": [
        OpCase([np.array(1.0), np.array(4.2), np.array(0.5)], {"count": 7},
               torch=lambda s, l, d: torch.arange(s, l, d), id="float"),
        OpCase([np.array(10, np.int64), np.array(-3, np.int64), np.array(-4, np.int64)],
               {"count": 4}, torch=lambda s, l, d: torch.arange(s, l, d), id="int_negative"),
        OpCase([np.array(5, np.int32), np.array(2, np.int32), np.array(1, np.int32)],
               {"count": 0}, id="empty"),
    ],
    "CenterCropPad": [
        OpCase([_img, np.array([2, 6], np.int64)], {"axes": (1, 2), "out_shape": (3, 2, 6)},
               torch=lambda x, s: torch.nn.functional.pad(x[:, 1:3, :], (1, 1)),
               opset=18, id="crop_and_pad"),
        OpCase([_img, np.array([4, 3, 3], np.int64)], {"axes": (0, 1, 2),
                                                       "out_shape": (4, 3, 3)},
               opset=18, id="all_axes_odd"),
    ],
}
