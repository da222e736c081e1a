"""Op cases for the fused kernels the passes build (graphdl/ops/fused.py), with torch
references. tests/test_ops.py runs them like every other op's cases."""
from __future__ import annotations

import numpy as np

from graphdl.ops.fused import instruction
from tests.op_case import OpCase, rng

def _prog(*steps):
    return tuple(instruction(op, args, attrs) for op, args, attrs in steps)


def _chain():
    # tanh((in0 + in1) * in2) - exp(in0 * 0.5): broadcasting bias, a scale, two branches
    return _prog(("Add", (0, 1), None),  # 4: in0 + in1
                 ("Mul", (4, 2), None),  # 5: * in2
                 ("Tanh", (5,), None),  # 6
                 ("Mul", (0, 3), None),  # 7: in0 * in3
                 ("Exp", (7,), None),  # 8
                 ("Sub", (6, 8), None))  # 9


def _chain_torch(a, b, c, d):
    import torch

    return torch.tanh((a + b) * c) - torch.exp(a * d)


def _relu_grad():
    # where(x > 0, g, 0): the relu gradient, a bool intermediate inside the program
    return _prog(("Greater", (0, 2), None), ("Where", (3, 1, 2), None))


def _relu_grad_torch(x, g, zero):
    import torch

    return torch.where(x > 0, g, zero)


def _away_from_zero(shape, seed):
    x = rng(seed).normal(size=shape)
    return x + np.sign(x) * 0.5  # no element near the kink


def _elementwise_cases():
    r = rng(0)
    return [
        OpCase([r.normal(size=(3, 4)), r.normal(size=(4,)), r.normal(size=(3, 1)),
                np.array(0.5)], {"program": _chain()}, torch=_chain_torch, id="chain"),
        OpCase([_away_from_zero((2, 5), 1), r.normal(size=(2, 5)), np.array(0.0)],
               {"program": _relu_grad()}, torch=_relu_grad_torch, grad_inputs=(1,),
               id="relu_grad"),
        OpCase([r.normal(size=(4, 3)), r.normal(size=(4, 3))],
               {"program": _prog(("Mul", (0, 1), None),
                                 ("Sigmoid", (2,), None),
                                 ("Mul", (3, 0), None))},
               torch=lambda a, b: __import__("torch").sigmoid(a * b) * a, id="swish_like"),
    ]


def _conv_torch(act):
    def ref(x, w, b, z):
        import torch

        y = torch.nn.functional.conv2d(x, w, b, stride=1, padding=1) + z
        return torch.relu(y) if act else y
    return ref


_CONV_MAIN = (("dilations", (1, 1)), ("group", 1), ("pads", (1, 1, 1, 1)), ("strides", (1, 1)))


def _conv_cases():
    r = rng(2)
    x, w, b = r.normal(size=(2, 3, 5, 4)), r.normal(size=(4, 3, 3, 3)) * 0.3, r.normal(size=4)
    z = r.normal(size=(2, 4, 5, 4))
    residual_relu = _prog(("Add", (0, 1), None), ("Relu", (2,), None))
    return [
        OpCase([x, w, b, z], {"main": _CONV_MAIN, "n_main": 3, "program": residual_relu},
               torch=_conv_torch(True), fd=False, id="residual_relu"),
        OpCase([x, w, b, z], {"main": _CONV_MAIN, "n_main": 3,
                              "program": _prog(("Add", (0, 1), None))},
               torch=_conv_torch(False), id="residual"),
    ]


def _gemm_cases():
    r = rng(3)
    a, b, c = r.normal(size=(4, 3)), r.normal(size=(5, 3)), r.normal(size=(5,))
    main = (("alpha", 1.0), ("beta", 1.0), ("transA", 0), ("transB", 1))
    clip = _prog(("Clip", (0,), {"min": 0.0, "max": 0.5}))
    sgd = _prog(("Mul", (0, 1), None), ("Sub", (2, 3), None))
    w = r.normal(size=(4, 5))

    def clip_ref(a, b, c):
        import torch

        return torch.clamp(a @ b.T + c, 0.0, 0.5)

    def sgd_ref(a, b, lr, w):
        return w - (a.T @ b) * lr  # torch tensors: operators only
    main_ta = (("alpha", 1.0), ("beta", 1.0), ("transA", 1), ("transB", 0))
    return [
        OpCase([a * 0.3, b, c], {"main": main, "n_main": 3, "program": clip}, torch=clip_ref,
               fd=False, id="relu6"),
        OpCase([r.normal(size=(6, 4)), r.normal(size=(6, 5)), np.array(0.1), w],
               {"main": main_ta, "n_main": 2, "program": sgd}, torch=sgd_ref, id="sgd_update"),
    ]


def _matmul_cases():
    r = rng(4)

    def ref(a, b, c):
        import torch

        return torch.tanh(a @ b + c)
    return [OpCase([r.normal(size=(2, 3, 4)), r.normal(size=(4, 5)), r.normal(size=(5,))],
                   {"main": (), "n_main": 2,
                    "program": _prog(("Add", (0, 1), None),
                                     ("Tanh", (2,), None))},
                   torch=ref, id="batched_bias_tanh")]


CASES = {
    "FusedElementwise": _elementwise_cases(),
    "FusedConv": _conv_cases(),
    "FusedGemm": _gemm_cases(),
    "FusedMatMul": _matmul_cases(),
}
