"""Round trip: every zoo model's whole training step (forward, loss, gradients, Adam updates)
exported to ONNX imports back into graphdl and computes the same numbers.

The conv models' steps exercise what graphdl's exporter writes for gradients: MaxPool with its
Indices output feeding a ScatterElements (MaxPoolGrad), a Conv whose weight is the
batch-transposed output gradient (ConvGradWeight, a weight with the symbolic batch as its
channel dim), ConvTranspose (ConvGradInput) and the shape arithmetic on the symbolic batch.
In float64, 4 images (batch statistics over few values, 1x1 maps deep in resnet, amplify
rounding: with 2 images of 16x16 a reordered sum moves resnet50's loss by 8%). The deeper
resnets run at width 4 (the zoo's architecture, every block and BatchNorm, with fewer
channels) on 64x64 images, so their last stage still sees 2x2 maps; at 32x32 resnet152's
1x1 maps alone push rounding past 1e-6.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx

F64 = {"dtype": "float64"}
ZOO = {
    "mlp": lambda: gd.models.mlp(num_classes=5, input_shape=(16,), **F64),
    "cnn": lambda: gd.models.cnn(num_classes=5, input_shape=(1, 8, 8), **F64),
    "resnet18": lambda: gd.models.resnet18(num_classes=5, input_shape=(3, 32, 32), **F64),
    # no dropout in these two: once exported, a training-mode Dropout is ONNX's, whose mask is
    # not seeded
    "googlenet": lambda: gd.models.googlenet(num_classes=5, input_shape=(3, 32, 32),
                                             dropout=0.0, **F64),
    "mobilenet_v2": lambda: gd.models.mobilenet_v2(num_classes=5, input_shape=(3, 32, 32),
                                                   dropout=0.0, **F64),
    **{name: (lambda name=name: getattr(gd.models, name)(num_classes=5,
                                                          input_shape=(3, 64, 64), width=4,
                                                          **F64))
       for name in ("resnet34", "resnet50", "resnet101", "resnet152")},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_training_step_round_trips_through_onnx(name):
    step = ZOO[name]().train_step_graph("cross_entropy", gd.optim.Adam(1e-3))
    back = from_onnx(to_onnx(step))
    rng = np.random.default_rng(0)
    feeds = {v.name: (rng.integers(0, 5, (4,)) if v.dtype.startswith("int") else
                      rng.standard_normal((4,) + tuple(v.shape[1:])).astype(v.dtype))
             for v in step.inputs}
    want = NumpyExecutor(step).run([feeds[v.name] for v in step.inputs])
    # the exported step takes the state (weights, Adam moments, step count) as inputs
    feeds.update({n.name: n.attrs["variable"].value for n in step.params})
    got = NumpyExecutor(back).run([feeds[v.name] for v in back.inputs])
    assert len(got) == len(want) == len(step.all_outputs)
    for i, (a, b) in enumerate(zip(got, want)):
        # (some gradients are exactly zero in exact arithmetic, e.g. a bias feeding a
        # BatchNorm: both sides hold rounding noise there, hence the absolute floor)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"{name} output {i}")
