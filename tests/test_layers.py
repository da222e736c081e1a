"""Layers: shapes, variable names, initializers, seeding, forward values and error messages."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl import layers as L
from graphdl.layers import initializers


def run(inputs, outputs, feeds, training=False, updates=()):
    """Compile ``outputs`` of ``inputs`` (inference form unless ``training``) and run once."""
    graph = gd.set_training(gd.Graph(list(inputs), list(outputs)), training)
    f = gd.function(list(graph.inputs), list(graph.outputs), updates=updates,
                    training=training)
    return f(*feeds)


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- naming ----------------------------------------------------------------------------------

def test_default_names_are_class_based_and_unique():
    with L.name_scope():
        assert [L.Dense(2).name for _ in range(3)] == ["dense", "dense_1", "dense_2"]
        assert L.Conv2D(4, 3).name == "conv2d"
        assert L.BatchNorm2D().name == "batch_norm2d"
        assert L.Activation("relu").name == "relu"
        assert L.ReLU().name == "relu_1"
        explicit = L.Dense(2, name="dense_3")
        assert explicit.name == "dense_3"
        assert L.Dense(2).name == "dense_4"  # generated names skip explicit ones
    with L.name_scope():
        assert L.Dense(2).name == "dense"  # a fresh scope starts the counters again


def test_dense_variables_and_node_named_after_layer():
    x = gd.input("x", (None, 5))
    layer = L.Dense(3, name="fc")
    assert not layer.built and layer.variables == [] and layer.num_params() == 0
    y = layer(x)
    assert y.shape == ("N", 3) and y.name == "fc" and y.node.op == "Gemm"
    assert [v.name for v in layer.variables] == ["fc.weight", "fc.bias"]
    assert layer.variables[0].value.shape == (3, 5)  # torch layout (out, in)
    assert layer.num_params() == 18
    assert repr(layer) == "<Dense 'fc': 18 params>"


def test_dense_forward_matches_numpy_and_reuse_shares_weights():
    x = gd.input("x", (None, 4), "float64")
    layer = L.Dense(3, activation="relu", name="fc")
    y1, y2 = layer(x), layer(x * 2.0)
    assert y1.name == "fc" and y1.node.op == "Relu"
    w, b = layer.variables[0].value, layer.variables[1].value
    assert w.dtype == np.float64  # variables take the input's dtype
    xv = rand(6, 4)
    out1, out2 = run([x], [y1, y2], [xv])
    np.testing.assert_allclose(out1, np.maximum(xv @ w.T + b, 0), rtol=1e-12)
    np.testing.assert_allclose(out2, np.maximum(2 * xv @ w.T + b, 0), rtol=1e-12)
    assert len(layer.variables) == 2


def test_dense_on_sequences_applies_to_last_axis():
    x = gd.input("x", (None, 7, 4), "float64")
    layer = L.Dense(3, name="proj")
    y = layer(x)
    assert y.shape == ("N", 7, 3) and y.name == "proj"
    xv = rand(2, 7, 4)
    w, b = (v.value for v in layer.variables)
    np.testing.assert_allclose(run([x], [y], [xv])[0], xv @ w.T + b, rtol=1e-12)


def test_variable_names_follow_torch():
    x = gd.input("x", (None, 3, 8, 8))
    conv, bn = L.Conv2D(4, 3, name="c"), L.BatchNorm2D(name="bn")
    bn(conv(x))
    assert [v.name for v in conv.variables] == ["c.weight", "c.bias"]
    assert [v.name for v in bn.variables] == ["bn.weight", "bn.bias", "bn.running_mean",
                                              "bn.running_var"]
    assert [v.trainable for v in bn.variables] == [True, True, False, False]
    assert bn.num_params() == 8 and bn.num_params(trainable_only=False) == 16


# ---- initializers and seeding ------------------------------------------------------------------

def test_initializer_statistics():
    x = gd.input("x", (None, 400))
    dense = L.Dense(600, seed=1)
    dense(x)
    w = dense.variables[0].value
    limit = np.sqrt(6 / 1000)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert np.var(w) == pytest.approx(2 / 1000, rel=0.03)  # Glorot: Var = 2 / (in + out)
    assert not dense.variables[1].value.any()

    img = gd.input("img", (None, 32, 8, 8))
    conv = L.Conv2D(64, 3, seed=2)
    conv(img)
    w = conv.variables[0].value
    assert w.shape == (64, 32, 3, 3)
    assert np.std(w) == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.03)  # He: fan_in = 288
    assert abs(np.mean(w)) < 0.01

    conv_out = L.Conv2D(64, 3, kernel_init="he_normal_fan_out", seed=3)
    conv_out(img)
    assert np.std(conv_out.variables[0].value) == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.03)

    torchlike = L.Dense(50, kernel_init="torch_uniform", bias_init="torch_uniform", seed=4)
    torchlike(x)
    for v in torchlike.variables:
        assert np.abs(v.value).max() <= 1 / np.sqrt(400)


def test_initializer_helpers():
    rng = np.random.default_rng(0)
    t = initializers.truncated_normal(1.0, bound=2.0)((1000, 100), 1, 1, rng)
    assert np.abs(t).max() <= 2.0
    assert initializers.get("xavier_uniform") is initializers.glorot_uniform
    assert initializers.default_fans((8, 4, 3, 3)) == (36, 72)
    with pytest.raises(ValueError, match="unknown initializer"):
        initializers.get("nope")
    x = gd.input("x", (None, 3))
    layer = L.Dense(2, kernel_init=initializers.constant(0.5))
    layer(x)
    assert (layer.variables[0].value == 0.5).all()


def test_seeded_initialization_is_deterministic():
    def weights(**kw):
        layer = L.Conv2D(8, 3, **kw)
        layer(gd.input("x", (None, 4, 6, 6)))
        return layer.variables[0].value

    np.testing.assert_array_equal(weights(seed=7), weights(seed=7))
    assert not np.array_equal(weights(seed=7), weights(seed=8))
    # without a seed, the layer's name seeds it: same name -> same weights, any process
    np.testing.assert_array_equal(weights(name="a"), weights(name="a"))
    assert not np.array_equal(weights(name="a"), weights(name="b"))
    # weight and bias use different streams
    layer = L.Dense(4, kernel_init="he_uniform", bias_init="he_uniform", seed=0)
    layer(gd.input("x", (None, 4)))
    assert not np.array_equal(layer.variables[0].value[0], layer.variables[1].value)


def test_get_and_set_weights():
    layer = L.Dense(2, name="d")
    layer(gd.input("x", (None, 3)))
    weights = layer.get_weights()
    assert set(weights) == {"weight", "bias"}
    layer.set_weights({"weight": np.ones((2, 3))})
    assert layer.variables[0].value.dtype == np.float32 and layer.variables[0].value.sum() == 6
    with pytest.raises(gd.ShapeError, match=r"weight has shape \(2, 3\), got \(3, 2\)"):
        layer.set_weights({"weight": np.ones((3, 2))})
    with pytest.raises(KeyError, match="no variable 'kernel'"):
        layer.set_weights({"kernel": np.ones((2, 3))})
    with pytest.raises(gd.GraphError, match="before the first call"):
        L.Dense(2).set_weights({})


# ---- bad input ---------------------------------------------------------------------------------

def test_dense_on_wrong_rank_names_the_layer_and_call_site():
    x = gd.input("x", (5,))
    with pytest.raises(gd.ShapeError) as err:
        L.Dense(3, name="head")(x)
    msg = str(err.value)
    assert "Dense layer 'head'" in msg and "rank >= 2" in msg and "float32[5]" in msg
    assert "test_layers.py" in msg


def test_bad_inputs_raise_clear_errors():
    x = gd.input("x", (None, 4))
    layer = L.Dense(3, name="fc")
    layer(x)
    with pytest.raises(gd.ShapeError, match=r"Dense layer 'fc'.*built for inputs \(\.\.\., 4\)"):
        layer(gd.input("y", (None, 5)))
    with pytest.raises(gd.ShapeError, match="floating-point input, got int64"):
        L.Dense(3)(gd.input("i", (None, 4), "int64"))
    with pytest.raises(gd.ShapeError, match=r"Conv2D layer 'c'.*rank 4 \(N, C, H, W\)"):
        L.Conv2D(4, 3, name="c")(x)
    with pytest.raises(gd.ShapeError, match="groups=3 must divide"):
        L.Conv2D(4, 3, groups=3)(gd.input("im", (None, 6, 5, 5)))
    with pytest.raises(gd.ShapeError, match="static feature"):
        L.Dense(2)(gd.input("s", (None, None)))
    with pytest.raises(TypeError, match="takes graph values"):
        L.Dense(2)(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown activation"):
        L.Dense(2, activation="swishy")
    with pytest.raises(ValueError, match="rate must be in"):
        L.Dropout(1.0)
    with pytest.raises(gd.ShapeError, match="integer ids"):
        L.Embedding(10, 4)(x)
    with pytest.raises(gd.ShapeError, match="same shape"):
        L.Add()([x, gd.input("z", (None, 3))])
    with pytest.raises(TypeError, match="non-empty list"):
        L.Add()(x)
    # an op's own inference error is prefixed with the layer and the user's line
    with pytest.raises(gd.ShapeError) as err:
        L.Conv2D(4, 5, name="big")(gd.input("small", (None, 3, 3, 3)))
    assert str(err.value).startswith("Conv2D layer 'big' (input float32[N,3,3,3]): Conv")
    assert "test_layers.py" in str(err.value)
    with pytest.raises(gd.ShapeError, match="MaxPool2D layer"):
        L.MaxPool2D(2)(x)


# ---- conv and pooling --------------------------------------------------------------------------

@pytest.mark.parametrize("kw, hw", [
    (dict(padding=0), (6, 8)), (dict(padding=1), (8, 10)), (dict(padding="same"), (8, 10)),
    (dict(padding="same", stride=2), (4, 5)), (dict(padding="valid", stride=2), (3, 4)),
    (dict(padding=(0, 1)), (6, 10)), (dict(padding=2, dilation=2), (8, 10)),
])
def test_conv2d_output_shapes(kw, hw):
    y = L.Conv2D(5, 3, **kw)(gd.input("x", (None, 3, 8, 10)))
    assert y.shape == ("N", 5) + hw


def test_grouped_and_depthwise_weights():
    x = gd.input("x", (None, 6, 8, 8))
    grouped = L.Conv2D(12, 3, groups=3, use_bias=False)
    assert grouped(x).shape == ("N", 12, 6, 6)
    assert [v.value.shape for v in grouped.variables] == [(12, 2, 3, 3)]
    depthwise = L.DepthwiseConv2D(3, padding=1, depth_multiplier=2)
    assert depthwise(x).shape == ("N", 12, 8, 8)
    assert depthwise.variables[0].value.shape == (12, 1, 3, 3) and depthwise.groups == 6


def test_conv2d_forward_matches_torch():
    torch = pytest.importorskip("torch")
    x = gd.input("x", (None, 4, 9, 7), "float64")
    for kw in (dict(stride=2, padding=1), dict(padding="same", dilation=2),
               dict(groups=2, stride=(1, 2)), dict(groups=4, padding=1)):
        conv = L.Conv2D(6 if kw.get("groups") != 4 else 8, 3, **kw)
        y = conv(x)
        xv = rand(2, 4, 9, 7)
        w, b = (torch.from_numpy(v.value) for v in conv.variables)
        pad = kw.get("padding", 0)
        ref = torch.nn.functional.conv2d(
            torch.from_numpy(xv), w, b, stride=kw.get("stride", 1), padding=pad,
            dilation=kw.get("dilation", 1), groups=kw.get("groups", 1)).numpy()
        np.testing.assert_allclose(run([x], [y], [xv])[0], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [7, 8, 112, 13])
def test_max_pool_ceil_mode_matches_torch_shapes(size):
    torch = pytest.importorskip("torch")
    for k, s, p in ((3, 2, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1)):
        y = L.MaxPool2D(k, s, p, ceil_mode=True)(gd.input("x", (None, 2, size, size)))
        ref = torch.nn.functional.max_pool2d(torch.zeros(1, 2, size, size), k, s, p,
                                             ceil_mode=True)
        assert y.shape[2:] == tuple(ref.shape[2:])


def test_pooling_forward_matches_torch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = gd.input("x", (None, 3, 9, 9), "float64")
    xv = rand(2, 3, 9, 9)
    xt = torch.from_numpy(xv)
    outs = [L.MaxPool2D(3, 2, ceil_mode=True)(x), L.MaxPool2D(2)(x),
            L.AvgPool2D(3, 2, 1)(x), L.GlobalAvgPool2D()(x),
            L.GlobalAvgPool2D(keepdims=True)(x), L.AdaptiveAvgPool2D((4, 4))(x),
            L.AdaptiveAvgPool2D(3)(x)]
    refs = [tf.max_pool2d(xt, 3, 2, ceil_mode=True), tf.max_pool2d(xt, 2),
            tf.avg_pool2d(xt, 3, 2, 1), xt.mean((2, 3)), xt.mean((2, 3), keepdim=True),
            tf.adaptive_avg_pool2d(xt, 4), tf.adaptive_avg_pool2d(xt, 3)]
    for got, ref in zip(run([x], outs, [xv]), refs):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12, atol=1e-12)


# ---- normalization, dropout, embedding -------------------------------------------------------

def test_batchnorm_training_updates_and_inference():
    x = gd.input("x", (None, 3, 4, 5), "float64")
    bn = L.BatchNorm2D(name="bn")
    y = bn(x)
    assert y.name == "bn" and y.shape == ("N", 3, 4, 5)
    updates = gd.state_updates([y])
    assert [var.name for var, _ in updates] == ["bn.running_mean", "bn.running_var"]
    xv = rand(4, 3, 4, 5) * 2 + 1
    out = run([x], [y], [xv], training=True, updates=updates)[0]
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(bn.variables[2].value, 0.1 * xv.mean(axis=(0, 2, 3)),
                               rtol=1e-10)
    # inference uses the running statistics
    mean, var = bn.variables[2].value, bn.variables[3].value
    ref = (xv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(run([x], [y], [xv])[0], ref, rtol=1e-10)


def test_batchnorm1d_on_features():
    x = gd.input("x", (None, 6), "float64")
    bn = L.BatchNorm1D()
    y = bn(x)
    assert y.shape == ("N", 6) and bn.num_params() == 12
    xv = rand(8, 6) * 3 + 2
    out = run([x], [y], [xv], training=True)[0]
    np.testing.assert_allclose(out, (xv - xv.mean(0)) / np.sqrt(xv.var(0) + 1e-5), rtol=1e-9)
    with pytest.raises(gd.ShapeError, match="BatchNorm1D"):
        L.BatchNorm1D()(gd.input("img", (None, 3, 4, 4)))


def test_layer_norm_matches_numpy():
    x = gd.input("x", (None, 5, 6), "float64")
    ln = L.LayerNorm()
    y = ln(x)
    assert [v.value.shape for v in ln.variables] == [(6,), (6,)]
    xv = rand(2, 5, 6)
    ref = (xv - xv.mean(-1, keepdims=True)) / np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(run([x], [y], [xv])[0], ref, rtol=1e-9)
    ln2 = L.LayerNorm(axis=1)
    ln2(x)
    assert ln2.variables[0].value.shape == (5, 6)


def test_dropout_owns_a_seed_and_is_identity_at_inference():
    x = gd.input("x", (None, 1000), "float64")
    drop = L.Dropout(0.5, seed=3, name="drop")
    y = drop(x)
    (seed,) = drop.variables
    assert seed.name == "drop.seed" and seed.value.dtype == np.int64 and seed.value.shape == ()
    assert not seed.trainable and drop.num_params() == 0
    xv = np.ones((4, 1000))
    np.testing.assert_array_equal(run([x], [y], [xv])[0], xv)
    updates = gd.state_updates([y])
    assert [var.name for var, _ in updates] == ["drop.seed"]
    out = run([x], [y], [xv], training=True, updates=updates)[0]
    assert set(np.unique(out)) <= {0.0, 2.0} and 0.4 < (out == 0).mean() < 0.6
    assert seed.value != 3  # the next seed was written back


def test_embedding_gathers_rows():
    ids = gd.input("ids", (None, 3), "int64")
    emb = L.Embedding(10, 4, seed=0)
    y = emb(ids)
    assert y.shape == ("N", 3, 4) and emb.variables[0].value.shape == (10, 4)
    idv = np.array([[1, 2, 9], [0, 0, 5]])
    np.testing.assert_array_equal(run([ids], [y], [idv])[0], emb.variables[0].value[idv])
    assert np.std(emb.variables[0].value) > 0.5  # N(0, 1) like torch


# ---- activations and shape layers --------------------------------------------------------------

def test_activations_match_numpy():
    from scipy.special import erf

    x = gd.input("x", (None, 7), "float64")
    xv = rand(3, 7) * 3
    e = np.exp(xv - xv.max(-1, keepdims=True))
    cases = {
        L.ReLU(): np.maximum(xv, 0), L.ReLU6(): np.clip(xv, 0, 6),
        L.LeakyReLU(0.2): np.where(xv > 0, xv, 0.2 * xv), L.Sigmoid(): 1 / (1 + np.exp(-xv)),
        L.Tanh(): np.tanh(xv), L.GELU(): 0.5 * xv * (1 + erf(xv / np.sqrt(2))),
        L.Softplus(): np.log1p(np.exp(xv)), L.Softmax(): e / e.sum(-1, keepdims=True),
        L.LogSoftmax(): np.log(e / e.sum(-1, keepdims=True)),
        L.Activation("tanh"): np.tanh(xv), L.Activation("leaky_relu", alpha=0.1):
            np.where(xv > 0, xv, 0.1 * xv),
        L.Activation(None): xv,
    }
    outs = [layer(x) for layer in cases]
    assert all(o.name == layer.name for o, layer in zip(outs, cases))
    for got, want in zip(run([x], outs, [xv]), cases.values()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_shape_and_merge_layers():
    x = gd.input("x", (None, 2, 3, 4), "float64")
    flat = L.Flatten(name="flat")(x)
    assert flat.shape == ("N", 24) and flat.name == "flat"
    assert L.Reshape((4, -1))(x).shape == ("N", 4, 6)
    same = L.Identity(name="same")(x)
    assert same.name == "same" and same.node.op == "Identity"
    added = L.Add(name="sum")([x, x])
    assert added.name == "sum" and added.shape == x.shape
    cat = L.Concatenate(axis=1)([x, x, x])
    assert cat.shape == ("N", 6, 3, 4)
    xv = rand(2, 2, 3, 4)
    got = run([x], [flat, added, cat], [xv])
    np.testing.assert_array_equal(got[0], xv.reshape(2, 24))
    np.testing.assert_array_equal(got[1], 2 * xv)
    np.testing.assert_array_equal(got[2], np.concatenate([xv] * 3, axis=1))


def test_layers_module_is_a_package():
    import graphdl.layers

    assert graphdl.layers.__file__.endswith("__init__.py")
    assert L.Dense is graphdl.layers.core.Dense


def test_layers_compose_in_sequential():
    model = gd.Sequential([L.Conv2D(4, 3, padding="same", use_bias=False), L.BatchNorm2D(),
                           L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.25),
                           L.Dense(10)], input_shape=(1, 8, 8))
    assert model.num_params() == 36 + 8 + 64 * 10 + 10
    out = model.predict(np.zeros((3, 1, 8, 8), np.float32))
    assert out.shape == (3, 10)
