"""Op test cases for Einsum (graphdl/ops/einsum.py): matmul, batched and transposed forms,
sums over one operand, outer products, ellipsis and implicit outputs, and three operands,
each against torch.einsum."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng


def _ref(eq):
    def ref(*xs):
        import torch
        return torch.einsum(eq, *xs)
    return ref


def randn(shape, seed: int) -> np.ndarray:
    """Standard normal float64 values."""
    return rng(seed).standard_normal(shape)


_SETUPS = [
    ("ij,jk->ik", [(3, 4), (4, 5)], "matmul"),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], "batched"),
    ("ij,kj->ik", [(3, 4), (5, 4)], "transposed-b"),
    ("ij->i", [(3, 4)], "row-sum"),
    ("ij->", [(3, 4)], "total"),
    ("i,j->ij", [(3,), (4,)], "outer"),
    ("ij->ji", [(3, 4)], "transpose"),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)], "ellipsis"),
    ("ij,jk", [(3, 4), (4, 2)], "implicit"),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)], "bilinear-three"),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)], "attention-scores"),
    ("ij,ij->i", [(3, 4), (3, 4)], "rowwise-dot"),
]
CASES: dict[str, list[OpCase]] = {"Einsum": [
    OpCase([randn(s, 10 * k + j) for j, s in enumerate(shapes)], {"equation": eq},
           torch=_ref(eq), id=name)
    for k, (eq, shapes, name) in enumerate(_SETUPS)
] + [OpCase([rng(200).integers(-3, 4, (2, 3)), rng(201).integers(-3, 4, (3, 2))],
            {"equation": "ij,jk->ik"}, torch=_ref("ij,jk->ik"), id="int")]}
