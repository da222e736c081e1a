"""Attention models exported by torch's dynamo exporter (``torch.onnx.export(dynamo=True)``)
with the batch *and* the sequence axis dynamic.

torch's TorchScript exporter bakes the traced sequence length into nn.MultiheadAttention's
reshapes (tests/test_onnx_real_models.py keeps only the batch dynamic there); the dynamo
exporter keeps both axes symbolic. Each model imports with both dims symbolic, runs at two
batch sizes and two sequence lengths, matches ONNX Runtime to 1e-5, and optimizes to no more
nodes than ONNX Runtime's basic level. The dynamo exporter needs onnxscript (in the test
extra).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx
from tests.test_onnx_real_models import (_Attention, _CausalAttention, _CausalEncoder,
                                         _Encoder, _nodes, _ort_basic_nodes, _padded, _seq)

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")

MODELS = {  # name -> (module factory, input names, feeds(batch, length))
    "transformer_encoder_layer": (_Encoder, ["x"], _seq),
    "transformer_encoder_layer_causal_padding": (_CausalEncoder, ["x", "pad"], _padded),
    "multihead_attention_causal": (_CausalAttention, ["x"], _seq),
    "multihead_attention_key_padding": (_Attention, ["x", "pad"], _padded),
}


def _export(net, names):
    batch, length = torch.export.Dim("N"), torch.export.Dim("T", min=2)
    args = (torch.zeros(2, 5, 16),) + ((torch.zeros(2, 5, dtype=torch.bool),)
                                        if "pad" in names else ())
    dynamic = {name: {0: batch, 1: length} for name in names}
    program = torch.onnx.export(net.eval(), args, dynamo=True, input_names=names,
                                output_names=["y"], dynamic_shapes=dynamic, opset_version=18,
                                verbose=False)
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 10)  # what the installed ORT accepts
    return proto


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dynamo_export_keeps_batch_and_sequence_symbolic(name):
    make, names, feeds = MODELS[name]
    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path does not export
    proto = _export(make(), names)
    graph = from_onnx(proto)
    for v in graph.inputs:
        assert not isinstance(v.shape[0], int) and not isinstance(v.shape[1], int), v.shape
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ex = NumpyExecutor(graph)
    for n in (1, 3):
        for t in (5, 7):
            f = feeds(n, t)
            want = sess.run(None, f)[0]
            got = ex.run([f[v.name] for v in graph.inputs])[0]
            assert got.shape == (n, t, 16)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _nodes(to_onnx(gd.optimize(graph).graph)) <= _ort_basic_nodes(proto)
