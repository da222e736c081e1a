"""Op cases for the loss family (graphdl/ops/loss.py) and the schedule math ops
(Floor, Cos and Sin in graphdl/ops/elementwise.py), with torch references. tests/test_ops.py runs them."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng


def _cross_entropy(reduction):
    def ref(z, y):
        import torch

        return torch.nn.functional.cross_entropy(z, y.long(), reduction=reduction)
    return ref


def _cross_entropy_grad(reduction):
    def ref(z, y, g):
        import torch

        d = torch.softmax(z, 1) - torch.nn.functional.one_hot(y.long(), z.shape[1]).to(z.dtype)
        if reduction == "none":
            return d * g[:, None]
        return d * (g / z.shape[0] if reduction == "mean" else g)
    return ref


def _logits_labels(seed, n=6, c=5, label_dtype=np.int64):
    r = rng(seed)
    # spread-out logits (scale 3) so softmax is far from uniform; one row shifted by 40 checks
    # that the log-softmax form stays exact for large logits
    z = r.normal(size=(n, c)) * 3.0
    z[0] += 40.0
    return z, r.integers(0, c, n).astype(label_dtype)


def _sce_cases():
    cases = []
    for i, reduction in enumerate(("mean", "sum", "none")):
        z, y = _logits_labels(i)
        cases.append(OpCase([z, y], {"reduction": reduction}, torch=_cross_entropy(reduction),
                            id=reduction))
    z, y = _logits_labels(7, n=3, c=11, label_dtype=np.int32)
    cases.append(OpCase([z, y], {"reduction": "mean"}, torch=_cross_entropy("mean"),
                        id="int32-labels"))
    z, y = _logits_labels(8, n=1, c=2)
    cases.append(OpCase([z, y], {"reduction": "mean"}, torch=_cross_entropy("mean"),
                        id="one-row-two-classes"))
    return cases


def _sce_grad_cases():
    cases = []
    for i, reduction in enumerate(("mean", "sum", "none")):
        z, y = _logits_labels(10 + i, n=4, c=3)
        g = np.asarray(rng(20 + i).normal(size=(4,) if reduction == "none" else ()))
        cases.append(OpCase([z, y, g], {"reduction": reduction},
                            torch=_cross_entropy_grad(reduction), id=reduction))
    return cases


def _uniform(seed, shape=(3, 5), offset=0.0):
    return rng(seed).uniform(-3.0, 3.0, size=shape) + offset


def _floor_input():
    x = _uniform(31)
    # keep inputs away from integers, where floor jumps
    return np.where(np.abs(x - np.round(x)) < 0.05, x + 0.1, x)


CASES = {
    "SoftmaxCrossEntropy": _sce_cases(),
    "SoftmaxCrossEntropyGrad": _sce_grad_cases(),
    "Floor": [OpCase([_floor_input()], torch=lambda x: x.floor(), fd=False, id="3x5")],
    "Cos": [OpCase([_uniform(32)], torch=lambda x: x.cos(), id="3x5"),
            OpCase([_uniform(33, (2, 3, 4), offset=10.0)], torch=lambda x: x.cos(),
                   id="2x3x4-large")],
    "Sin": [OpCase([_uniform(34)], torch=lambda x: x.sin(), id="3x5")],
}
