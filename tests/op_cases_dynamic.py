"""Op cases for graphdl/ops/dynamic.py (shapes as run-time tensors, NonZero); the output
types in ``out_shape`` are what an importer would know, here fully static so the kernels'
shapes can be checked. tests/test_ops.py runs them."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng

_x = rng(0).standard_normal((2, 3, 4))
_mask = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])

CASES = {
    "ShapeOf": [OpCase([_x], {"start": 0}, torch=None, id="all"),
                OpCase([_x], {"start": 1, "end": 3}, id="middle")],
    "DynReshape": [
        OpCase([_x, np.array([0, -1, 2], np.int64)], {"out_shape": (2, 6, 2)},
               torch=lambda x, s: x.reshape(2, 6, 2), id="zero_and_minus_one"),
        OpCase([_x, np.array([4, 6], np.int64)], {"out_shape": (4, 6)},
               torch=lambda x, s: x.reshape(4, 6), id="plain")],
    "DynExpand": [
        OpCase([rng(1).standard_normal((3, 1)), np.array([2, 3, 4], np.int64)],
               {"out_shape": (2, 3, 4)}, torch=lambda x, s: x.expand(2, 3, 4), id="grow"),
        OpCase([rng(2).standard_normal((1, 4)), np.array([3, 1], np.int64)],
               {"out_shape": (3, 4)}, torch=lambda x, s: x.expand(3, 4), id="ones_keep")],
    "DynConstantOfShape": [
        OpCase([np.array([2, 3], np.int64)], {"value": np.array(1.5, np.float32),
                                              "out_shape": (2, 3)}, id="float"),
        OpCase([np.array([4], np.int64)], {"value": np.array(7, np.int64),
                                           "out_shape": (4,)}, id="int")],
    "NonZero": [OpCase([_mask], {"count": 3}, id="2d"),
                OpCase([np.array([True, False, True])], {"count": 2}, id="bool")],
}
