"""Behaviour of the nn ops beyond single-op cases (tests/op_cases_nn.py covers those):
BatchNorm running statistics over several steps and in inference mode, the training flag,
dropout masks and seeds, build-time errors, the batch-chunked conv kernels and the builders."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.ops import _windows
from graphdl.ops.registry import apply


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- BatchNorm state -----------------------------------------------------------------------

def _bn_graph(shape, momentum=0.1, eps=1e-5, seed=0):
    c = shape[1]
    g = _rng(seed)
    x = gd.input("x", (None,) + shape[1:], "float64")
    scale = gd.param("bn.weight", g.uniform(0.5, 1.5, c))
    bias = gd.param("bn.bias", g.standard_normal(c))
    mean = gd.param("bn.running_mean", np.zeros(c), trainable=False)
    var = gd.param("bn.running_var", np.ones(c), trainable=False)
    y = gd.batch_norm(x, scale, bias, mean, var, training=True, momentum=momentum, eps=eps)
    return x, y, (scale, bias, mean, var)


@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (10, 4)])
def test_batch_norm_running_stats_follow_torch_over_steps(shape):
    torch = pytest.importorskip("torch")
    x, y, (scale, bias, mean, var) = _bn_graph(shape, momentum=0.3, eps=1e-3)
    updates = gd.state_updates([y])
    assert [v.name for v, _ in updates] == ["bn.running_mean", "bn.running_var"]
    step = gd.function([x], y, updates=updates, optimize=False)
    bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        shape[1], eps=1e-3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gd.variable_of(scale).value))
        bn.bias.copy_(torch.tensor(gd.variable_of(bias).value))
    bn.train()
    for k in range(4):
        batch = _rng(10 + k).standard_normal(shape) * (k + 1) + k
        got = step(batch)
        want = bn(torch.tensor(batch)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gd.variable_of(mean).value, bn.running_mean.numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(gd.variable_of(var).value, bn.running_var.numpy(),
                                   rtol=1e-12)
    # inference mode normalizes with the running statistics and leaves them alone
    infer = gd.Function(gd.set_training(gd.Graph([x], [y]), False))
    before = gd.variable_of(mean).value.copy()
    bn.eval()
    batch = _rng(99).standard_normal(shape)
    np.testing.assert_allclose(infer(batch)[0], bn(torch.tensor(batch)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(gd.variable_of(mean).value, before)


def test_batch_norm_inference_mode_passes_statistics_through():
    c = 3
    x = gd.input("x", (4, c, 2, 2), "float64")
    stats = [gd.const(v) for v in (np.ones(c), np.zeros(c), np.arange(c) * 1.0,
                                   np.full(c, 4.0))]
    y, new_mean, new_var = apply("BatchNorm", x, *stats, training=False, momentum=0.1,
                                 eps=0.0)
    xv = _rng().standard_normal((4, c, 2, 2))
    out_y, out_mean, out_var = gd.function([x], [y, new_mean, new_var], optimize=False)(xv)
    np.testing.assert_allclose(out_y, (xv - np.arange(c).reshape(1, c, 1, 1)) / 2.0)
    np.testing.assert_array_equal(out_mean, np.arange(c) * 1.0)
    np.testing.assert_array_equal(out_var, np.full(c, 4.0))
    assert gd.state_updates([y]) == []  # nothing to write back at inference


def test_set_training_flips_batch_norm_and_dropout():
    x, y, _ = _bn_graph((6, 2, 3, 3))
    seed = gd.param("drop.seed", np.array(3, np.int64), trainable=False)
    z = gd.dropout(y, 0.5, seed)
    graph = gd.Graph([x], [z], gd.state_updates([z]))
    assert len(graph.updates) == 3  # running mean, running var, seed
    infer = gd.set_training(graph, False)
    modes = {n.op: n.attrs["training"] for n in infer.nodes if "training" in n.attrs}
    assert modes == {"BatchNorm": False, "Dropout": False}
    assert gd.state_updates(list(infer.outputs)) == []
    back = gd.set_training(infer, True)
    assert all(n.attrs["training"] for n in back.nodes if "training" in n.attrs)
    xv = _rng(1).standard_normal((6, 2, 3, 3))
    # inference output is deterministic and has no dropped elements
    (out,) = gd.Function(gd.Graph([x], list(infer.outputs)))(xv)
    assert np.all(out != 0)


def test_batch_norm_needs_more_than_one_value_per_channel():
    x, y, _ = _bn_graph((1, 3))
    with pytest.raises(gd.GraphError, match="more than 1 value per channel"):
        gd.function([x], y, optimize=False)(np.ones((1, 3)))


# ---- Dropout -------------------------------------------------------------------------------

def _dropout_outputs(rate, seed_value, shape=(200, 150), training=True):
    x = gd.input("x", shape, "float32")
    seed = gd.param("seed", np.array(seed_value, np.int64), trainable=False)
    y, mask, next_seed = apply("Dropout", x, seed, rate=rate, training=training)
    f = gd.function([x], [y, mask, next_seed], updates=gd.state_updates([y]), optimize=False)
    return f, gd.variable_of(seed)


def test_dropout_training_mask_scaling_and_statistics():
    f, seed = _dropout_outputs(0.3, 11)
    xv = _rng().standard_normal((200, 150)).astype(np.float32)
    y, mask, next_seed = f(xv)
    assert mask.dtype == bool and y.dtype == np.float32
    assert int(next_seed) == 12 and int(seed.value) == 12  # the seed state advanced
    kept = mask.mean()
    assert abs(kept - 0.7) < 0.01  # 30000 draws: std of the mean is ~0.003
    np.testing.assert_allclose(y, xv * mask / np.float32(0.7), rtol=1e-6)
    assert np.all(y[~mask] == 0)


def test_dropout_seed_determinism():
    xv = np.ones((50, 40), np.float32)
    f1, _ = _dropout_outputs(0.5, 5, (50, 40))
    f2, _ = _dropout_outputs(0.5, 5, (50, 40))
    first, second = f1(xv)[1], f1(xv)[1]  # the seed advanced in between
    assert np.array_equal(first, f2(xv)[1])  # same seed, same mask
    assert not np.array_equal(first, second)
    # float64 graphs draw the same mask for the same seed
    x64 = gd.input("x64", (50, 40), "float64")
    _, mask64, _ = apply("Dropout", x64, gd.const(np.array(5, np.int64)), rate=0.5,
                         training=True)
    assert np.array_equal(gd.function([x64], mask64, optimize=False)(xv.astype(np.float64)),
                          first)


def test_dropout_inference_is_identity():
    f, seed = _dropout_outputs(0.9, 4, training=False)
    xv = _rng().standard_normal((200, 150)).astype(np.float32)
    y, mask, _ = f(xv)
    np.testing.assert_array_equal(y, xv)
    assert mask.all()
    assert int(seed.value) == 4  # no update at inference


def test_dropout_gradient_uses_the_mask():
    x = gd.input("x", (30, 20), "float64")
    y = gd.dropout(x, 0.25, gd.const(np.array(9, np.int64)))
    (gx,) = gd.grad(gd.sum(y * 3.0), [x])
    out, g = gd.function([x], [y, gx], optimize=False)(np.ones((30, 20)))
    np.testing.assert_allclose(g, (out != 0) * 3.0 / 0.75)


# ---- build-time errors ---------------------------------------------------------------------

def test_conv_channel_mismatch_names_op_shapes_and_site():
    x = gd.input("x", (None, 3, 8, 8))
    w = gd.param("w", np.zeros((4, 5, 3, 3), np.float32))
    with pytest.raises(gd.ShapeError) as err:
        gd.conv2d(x, w)
    msg = str(err.value)
    assert "Conv" in msg and "3 channels" in msg and "(4, 5, 3, 3)" in msg
    assert "float32[N,3,8,8]" in msg and "test_nn_ops.py" in msg


@pytest.mark.parametrize("build, pattern", [
    (lambda x: gd.conv2d(x, gd.const(np.zeros((4, 3, 9, 9), np.float32))), "larger than"),
    (lambda x: gd.conv2d(x, gd.const(np.zeros((4, 3, 3, 3), np.float32)),
                         gd.const(np.zeros(5, np.float32))), "bias must have shape"),
    (lambda x: gd.conv2d(x, gd.const(np.zeros((4, 1, 3, 3), np.float32)), groups=2),
     "not divisible|expects"),
    (lambda x: gd.max_pool2d(x, 2, padding=2), "pads"),
    (lambda x: gd.avg_pool2d(x, 9), "larger than"),
    (lambda x: gd.batch_norm(x, *[gd.const(np.ones(4, np.float32))] * 4),
     "scale must have shape"),
    (lambda x: gd.layer_norm(x, gd.const(np.ones(8, np.float32)),
                             gd.const(np.ones(7, np.float32))), "bias must have"),
    (lambda x: gd.dropout(x, 0.5, gd.const(np.array(1.0))), "int64 scalar"),
])
def test_nn_ops_reject_bad_inputs_at_build_time(build, pattern):
    x = gd.input("x", (2, 3, 8, 8))
    with pytest.raises(gd.ShapeError, match=pattern):
        build(x)


# ---- chunked kernels and builders ----------------------------------------------------------

@pytest.mark.parametrize("channels, groups, out_channels, stride",
                         [(3, 1, 5, 1), (4, 2, 4, 2), (3, 3, 6, 1), (4, 1, 6, 1)])
def test_conv_kernels_across_batch_chunks(monkeypatch, channels, groups, out_channels, stride):
    """Tiny chunks force many chunks and a partial last one; results must not change."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_windows, "CHUNK_BYTES", 1500)
    g = _rng(3)
    kernel = 1 if out_channels == 6 and groups == 1 else 3  # the last case is pointwise
    xv = g.standard_normal((7, channels, 6, 7))
    wv = g.standard_normal((out_channels, channels // groups, kernel, kernel))
    x = gd.input("x", (None, channels, 6, 7), "float64")
    w = gd.param("w", wv)
    pad = kernel // 2
    y = gd.conv2d(x, w, stride=stride, padding=pad, groups=groups)
    gx, gw = gd.grad(gd.sum(y * y), [x, w])
    got = gd.function([x], [y, gx, gw], optimize=False)(xv)
    tx = torch.tensor(xv, requires_grad=True)
    tw = torch.tensor(wv, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, groups=groups)
    want = [ty, *torch.autograd.grad((ty * ty).sum(), [tx, tw])]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-10)


def test_conv_double_backward_matches_torch():
    torch = pytest.importorskip("torch")
    g = _rng(4)
    xv, wv = g.standard_normal((2, 3, 6, 5)), g.standard_normal((4, 3, 3, 3))
    x = gd.input("x", (2, 3, 6, 5), "float64")
    w = gd.param("w2", wv)
    y = gd.conv2d(x, w, stride=(2, 1), padding=(1, 0, 0, 1))
    (gx,) = gd.grad(gd.sum(gd.tanh(y)), [x])
    (gw,) = gd.grad(gd.sum(gx * gx), [w])  # a gradient penalty
    got = gd.function([x], gw, optimize=False)(xv)
    tx = torch.tensor(xv, requires_grad=True)
    tw = torch.tensor(wv, requires_grad=True)
    ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (0, 1, 1, 0)), tw,
                                    stride=(2, 1))
    (tgx,) = torch.autograd.grad(torch.tanh(ty).sum(), tx, create_graph=True)
    (tgw,) = torch.autograd.grad((tgx * tgx).sum(), tw)
    np.testing.assert_allclose(got, tgw.numpy(), rtol=1e-9, atol=1e-10)


def test_conv2d_padding_forms():
    x = gd.input("x", (1, 2, 7, 8))
    w = gd.const(np.zeros((3, 2, 3, 2), np.float32))
    assert gd.conv2d(x, w, padding="same").shape == (1, 3, 7, 8)
    assert gd.conv2d(x, w, padding="same", stride=2).shape == (1, 3, 4, 4)
    assert gd.conv2d(x, w, padding="valid").shape == (1, 3, 5, 7)
    assert gd.conv2d(x, w, padding=(1, 0)).node.attrs["pads"] == (1, 0, 1, 0)
    assert gd.conv2d(x, w, padding=(1, 2, 0, 1)).shape == (1, 3, 6, 10)
    with pytest.raises(ValueError, match="padding"):
        gd.conv2d(x, w, padding="full")


def test_pool_builders_default_stride_and_global_pool():
    x = gd.input("x", (None, 3, 9, 8))
    assert gd.max_pool2d(x, 2).shape == ("N", 3, 4, 4)
    assert gd.max_pool2d(x, 2, ceil_mode=True).shape == ("N", 3, 5, 4)
    assert gd.avg_pool2d(x, 3, stride=2, padding=1).shape == ("N", 3, 5, 4)
    assert gd.global_avg_pool(x).shape == ("N", 3, 1, 1)
    xv = _rng().standard_normal((2, 3, 9, 8)).astype(np.float32)
    out = gd.function([x], gd.global_avg_pool(x), optimize=False)(xv)
    np.testing.assert_allclose(out, xv.mean((2, 3), keepdims=True), rtol=1e-6)


def test_small_cnn_trains_like_torch_through_the_optimizer_pipeline():
    """conv -> BN -> relu -> pool -> global pool, gradients through the default passes."""
    torch = pytest.importorskip("torch")
    g = _rng(5)
    xv = g.standard_normal((4, 2, 8, 6))
    wv = g.standard_normal((5, 2, 3, 3)) * 0.3
    x = gd.input("x", (None, 2, 8, 6), "float64")
    w = gd.param("conv.w", wv)
    scale, bias = gd.param("bn.w", np.ones(5)), gd.param("bn.b", np.zeros(5))
    mean = gd.param("bn.m", np.zeros(5), trainable=False)
    var = gd.param("bn.v", np.ones(5), trainable=False)
    h = gd.relu(gd.batch_norm(gd.conv2d(x, w, padding=1), scale, bias, mean, var))
    h = gd.avg_pool2d(gd.max_pool2d(h, 2), 2, stride=1, padding=1, count_include_pad=False)
    loss = gd.sum(gd.square(gd.global_avg_pool(h)))
    grads = gd.grad(loss, [w, scale, bias])
    f = gd.function([x], [loss, *grads], updates=gd.state_updates([loss]))
    got = f(xv)
    tw = torch.tensor(wv, requires_grad=True)
    bn = torch.nn.BatchNorm2d(5).double()
    th = torch.relu(bn(torch.nn.functional.conv2d(torch.tensor(xv), tw, padding=1)))
    th = torch.nn.functional.avg_pool2d(torch.nn.functional.max_pool2d(th, 2), 2, 1, 1,
                                        count_include_pad=False)
    tloss = (th.mean((2, 3)) ** 2).sum()
    want = [tloss, *torch.autograd.grad(tloss, [tw, bn.weight, bn.bias])]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gd.variable_of(var).value, bn.running_var.numpy(), rtol=1e-10)


def test_pool_and_batch_norm_gradients_across_chunks(monkeypatch):
    """Tiny chunk sizes split max-pool gradients by image and batch-norm gradients by
    channel; results must not change."""
    torch = pytest.importorskip("torch")
    from graphdl.ops import _norm_kernels, _pool_kernels

    monkeypatch.setattr(_pool_kernels, "GRAD_CHUNK_BYTES", 600)
    monkeypatch.setattr(_norm_kernels, "GROUP_BYTES", 500)
    g = _rng(6)
    xv = g.standard_normal((5, 4, 6, 7))
    x = gd.input("x", (None, 4, 6, 7), "float64")
    scale = gd.param("s", g.uniform(0.5, 1.5, 4))
    stats = [gd.const(np.zeros(4)), gd.const(np.zeros(4)), gd.const(np.ones(4))]
    h = gd.batch_norm(x, scale, *stats)
    y = gd.max_pool2d(h, 2) + gd.max_pool2d(h, 3, stride=2, padding=1)[:, :, :3, :3]
    loss = gd.sum(y * y)
    got = gd.function([x], gd.grad(loss, [x, scale]), optimize=False)(xv)
    tx = torch.tensor(xv, requires_grad=True)
    ts = torch.tensor(gd.variable_of(scale).value, requires_grad=True)
    th = torch.nn.functional.batch_norm(tx, None, None, ts, torch.zeros(4, dtype=tx.dtype), True)
    ty = torch.nn.functional.max_pool2d(th, 2) + \
        torch.nn.functional.max_pool2d(th, 3, 2, 1)[:, :, :3, :3]
    want = torch.autograd.grad((ty * ty).sum(), [tx, ts])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-10)
