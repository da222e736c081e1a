"""Real models from torch's own modules, exported by torch.onnx (TorchScript exporter) with
dynamic axes: each imports with its dims symbolic, runs at two batch sizes (and two sequence
lengths where the export keeps that axis dynamic), matches ONNX Runtime to 1e-5 relative, and
optimizes to no more nodes than ONNX Runtime's basic level.

torch's TorchScript exporter bakes the traced sequence length into nn.MultiheadAttention's
reshapes, so here the attention models keep only the batch dynamic (ONNX Runtime refuses
other lengths too); tests/test_onnx_dynamo_export.py runs the same attention models exported
by torch's dynamo exporter with batch and sequence dynamic.
The conv models keep only the batch dynamic (graphdl's convolutions need static spatial
dims); LSTM and GRU keep batch and sequence dynamic (the Recurrence op loops at run time).
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx

torch = pytest.importorskip("torch")
nn = torch.nn


def _export(net, args, names, dynamic):
    f = io.BytesIO()
    torch.onnx.export(net.eval(), args, f, dynamo=False, input_names=names,
                      output_names=["y"], dynamic_axes=dynamic, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def _nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type != "Constant" for n in model.graph.node)


def _ort_basic_nodes(model: onnx.ModelProto) -> int:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "basic.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return _nodes(onnx.load(so.optimized_model_filepath))


class _EmbedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.ln = nn.Embedding(50, 16), nn.LayerNorm(16)

    def forward(self, ids):
        return self.ln(self.emb(ids))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x, pad):
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x, src_mask=None, is_causal=False)


class _HardBlock(nn.Module):
    """A MobileNetV3 block: conv, Hardswish, squeeze-excite gated by Hardsigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.Hardswish()
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(),
                                nn.Conv2d(4, 8, 1), nn.Hardsigmoid())

    def forward(self, x):
        h = self.act(self.conv(x))
        return h * self.se(h)


class _UpBlock(nn.Module):
    """A UNet decoder step: ConvTranspose2d (with output padding), nearest and bilinear
    Upsample."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        return self.bilinear(self.nearest(self.up(x)))


class _CausalEncoder(nn.Module):
    """An encoder layer with a causal mask made in the graph (Trilu) and a key-padding mask."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x, pad):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.layer(x, src_mask=mask, src_key_padding_mask=pad, is_causal=True)


class _CausalAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)  # True: may not attend
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


class _Recurrent(nn.Module):
    """A bidirectional LSTM or GRU over (batch, time, features)."""

    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(nn, kind)(16, 12, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.rnn(x)[0]


def _tokens(n, t):
    return {"ids": np.random.default_rng(n * 10 + t).integers(0, 50, (n, t))}


def _seq(n, t):
    return {"x": np.random.default_rng(n * 10 + t).standard_normal((n, t, 16), np.float32)}


def _padded(n, t):
    pad = np.zeros((n, t), bool)
    pad[:, -1] = True
    return dict(_seq(n, t), pad=pad)


def _image(n, t):
    return {"x": np.random.default_rng(n).standard_normal((n, 8, 10, 12), np.float32)}


def _small_image(n, t):
    return {"x": np.random.default_rng(n).standard_normal((n, 8, 5, 6), np.float32)}


MODELS = {
    "embedding_layernorm": (
        _EmbedNorm, lambda: (torch.zeros(2, 5, dtype=torch.long),), ["ids"],
        {"ids": {0: "N", 1: "T"}, "y": {0: "N", 1: "T"}}, _tokens, (4, 7)),
    "grouped_dilated_conv": (
        lambda: nn.Sequential(nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
                              nn.Conv2d(16, 16, 3, groups=16, padding=1)),
        lambda: (torch.zeros(2, 8, 10, 12),), ["x"], {"x": {0: "N"}, "y": {0: "N"}},
        _image, (None,)),
    "multihead_attention_key_padding": (
        _Attention, lambda: (torch.zeros(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)),
        ["x", "pad"], {"x": {0: "N"}, "pad": {0: "N"}, "y": {0: "N"}}, _padded, (5,)),
    "hardswish_hardsigmoid_block": (
        _HardBlock, lambda: (torch.zeros(2, 8, 10, 12),), ["x"], {"x": {0: "N"}, "y": {0: "N"}},
        _image, (None,)),
    "conv_transpose_upsample": (
        _UpBlock, lambda: (torch.zeros(2, 8, 5, 6),), ["x"], {"x": {0: "N"}, "y": {0: "N"}},
        _small_image, (None,)),
    "transformer_encoder_layer_causal_padding": (
        _CausalEncoder, lambda: (torch.zeros(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)),
        ["x", "pad"], {"x": {0: "N"}, "pad": {0: "N"}, "y": {0: "N"}}, _padded, (5,)),
    "multihead_attention_causal": (
        _CausalAttention, lambda: (torch.zeros(2, 5, 16),), ["x"],
        {"x": {0: "N"}, "y": {0: "N"}}, _seq, (5,)),
    "lstm_bidirectional": (
        lambda: _Recurrent("LSTM"), lambda: (torch.zeros(2, 5, 16),), ["x"],
        {"x": {0: "N", 1: "T"}, "y": {0: "N", 1: "T"}}, _seq, (5, 7)),
    "gru_bidirectional": (
        lambda: _Recurrent("GRU"), lambda: (torch.zeros(2, 5, 16),), ["x"],
        {"x": {0: "N", 1: "T"}, "y": {0: "N", 1: "T"}}, _seq, (5, 7)),
    "transformer_encoder_layer": (
        _Encoder, lambda: (torch.zeros(2, 5, 16),), ["x"], {"x": {0: "N"}, "y": {0: "N"}},
        _seq, (5,)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_module_imports_matches_ort_and_optimizes(name):
    make, args, names, dynamic, feeds, lengths = MODELS[name]
    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path does not export
    proto = _export(make(), args(), names, dynamic)
    graph = from_onnx(proto)
    for v, axes in ((v, dynamic[v.name]) for v in graph.inputs):
        for axis, sym in axes.items():
            assert v.shape[axis] == sym  # the dynamic axes stay symbolic
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ex = NumpyExecutor(graph)
    for n in (1, 3):
        for t in lengths:
            f = feeds(n, t)
            want = sess.run(None, f)[0]
            got = ex.run([f[v.name] for v in graph.inputs])[0]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    optimized = to_onnx(gd.optimize(graph).graph)
    assert _nodes(optimized) <= _ort_basic_nodes(proto)
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
           for i in optimized.graph.input}
    for v in graph.inputs:  # exported back with the same dim_params
        assert ins[v.name] == list(v.shape)
