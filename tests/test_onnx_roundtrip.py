"""Round trip: a zoo model's whole training step (forward, loss, gradients, Adam updates)
exported to ONNX imports back into graphdl and computes the same numbers.

Only the MLP's step round-trips today. The conv zoo models' steps do not import back yet:
graphdl lowers MaxPool's gradient through MaxPool's Indices output, which the importer
refuses, and the weight gradient of a conv as a Conv whose weight has the symbolic batch as
a channel dim, which graphdl's Conv refuses (its weights must be static).
"""
from __future__ import annotations

import numpy as np

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx


def test_mlp_training_step_round_trips_through_onnx():
    model = gd.models.mlp(num_classes=5, input_shape=(16,))
    step = model.train_step_graph("cross_entropy", gd.optim.Adam(1e-3))
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
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
