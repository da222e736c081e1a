"""Symbolic reverse-mode autodiff: fan-out, unused and integer inputs, broadcasting, grad_y,
errors, and gradients of gradients (second derivatives) vs finite differences and torch."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.ir import GraphError, Node


def run(inputs, outputs, *arrays):
    """Compile without passes (the autodiff output itself is under test) and run once."""
    return gd.function(inputs, outputs, optimize=False)(*arrays)


def fd_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar (or array, then per output) function."""
    grad = np.zeros(x.shape + np.shape(f(x)))
    for j in range(x.size):
        plus, minus = x.copy(), x.copy()
        plus.flat[j] += eps
        minus.flat[j] -= eps
        grad.reshape(x.size, -1)[j] = (np.ravel(f(plus)) - np.ravel(f(minus))) / (2 * eps)
    return grad


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_fan_out_sums_every_path():
    x = gd.input("x", (3, 4), "float64")
    y = x * x + x + gd.exp(x)  # x feeds four uses
    (g,) = gd.grad(gd.sum(y), [x])
    xv = randn(3, 4)
    (gv,) = run([x], [g], xv)
    np.testing.assert_allclose(gv, 2 * xv + 1 + np.exp(xv), rtol=1e-12)


def test_shared_subexpression_gradient_is_summed_once():
    x = gd.input("x", (2, 3), "float64")
    h = gd.tanh(x)
    y = gd.sum(h * h) + gd.sum(h)
    (g,) = gd.grad(y, [x])
    xv = randn(2, 3, seed=1)
    (gv,) = run([x], [g], xv)
    t = np.tanh(xv)
    np.testing.assert_allclose(gv, (2 * t + 1) * (1 - t * t), rtol=1e-12)


def test_unused_input_gets_zeros():
    x = gd.input("x", (3,), "float64")
    unused = gd.input("u", (2, 5), "float64")
    gx, gu = gd.grad(gd.sum(x * 2.0), [x, unused])
    assert gu.shape == (2, 5) and gu.dtype == "float64"
    out = run([x, unused], [gx, gu], np.ones(3), np.ones((2, 5)))
    np.testing.assert_array_equal(out[0], 2.0)
    np.testing.assert_array_equal(out[1], np.zeros((2, 5)))


def test_integer_inputs_get_no_gradient():
    x = gd.input("x", (5, 3), "float64")
    idx = gd.input("idx", (4,), "int64")
    y = gd.sum(gd.gather(x, idx) * 3.0)
    gx, gi = gd.grad(y, [x, idx])
    assert gi is None
    (gv,) = run([x, idx], [gx], randn(5, 3), np.array([0, 2, 2, 4]))
    want = np.zeros((5, 3))
    np.add.at(want, [0, 2, 2, 4], 3.0)  # repeated indices accumulate
    np.testing.assert_array_equal(gv, want)


def np_sum_to(arr: np.ndarray, shape) -> np.ndarray:
    """NumPy reference for summing a broadcast result back to ``shape``."""
    lead = arr.ndim - len(shape)
    arr = arr.sum(axis=tuple(range(lead))) if lead else arr
    keep = tuple(i for i, d in enumerate(shape) if d == 1 and arr.shape[i] != 1)
    return arr.sum(axis=keep, keepdims=True) if keep else arr


@pytest.mark.parametrize("shape_b", [(4,), (1, 4), (3, 1), (), (2, 1, 1)])
def test_broadcasting_sums_back_to_input_shape(shape_b):
    a = gd.input("a", (3, 4), "float64")
    b = gd.input("b", shape_b, "float64")
    cv = randn(3, 4, seed=2)
    y = gd.sum((a * b) * gd.const(cv))
    ga, gb = gd.grad(y, [a, b])
    assert ga.shape == (3, 4) and gb.shape == shape_b
    av, bv = randn(3, 4, seed=3), randn(*shape_b, seed=4)
    ga_v, gb_v = run([a, b], [ga, gb], av, bv)
    full = np.broadcast_shapes((3, 4), shape_b)
    np.testing.assert_allclose(gb_v, np_sum_to(np.broadcast_to(av * cv, full), shape_b),
                               rtol=1e-12)
    np.testing.assert_allclose(ga_v, np_sum_to(np.broadcast_to(bv * cv, full), (3, 4)),
                               rtol=1e-12)


def test_gradient_wrt_intermediate_value():
    x = gd.input("x", (3,), "float64")
    h = x * 3.0
    y = gd.sum(h * h)
    (gh,) = gd.grad(y, [h])
    (v,) = run([x], [gh], np.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(v, 2 * 3.0 * np.array([1.0, 2.0, -1.0]))


def test_grad_of_single_value_returns_single_value():
    x = gd.input("x", (2,), "float64")
    g = gd.grad(gd.sum(x), x)
    assert isinstance(g, gd.Value)


def test_grad_y_gives_a_vector_jacobian_product():
    x = gd.input("x", (3, 2), "float64")
    y = gd.tanh(x) * 2.0
    cot = gd.input("cot", (3, 2), "float64")
    (g,) = gd.grad(y, [x], grad_y=cot)
    xv, cv = randn(3, 2, seed=5), randn(3, 2, seed=6)
    (gv,) = run([x, cot], [g], xv, cv)
    np.testing.assert_allclose(gv, cv * 2.0 * (1 - np.tanh(xv) ** 2), rtol=1e-12)


def test_non_scalar_y_without_grad_y_is_an_error():
    x = gd.input("x", (3,), "float64")
    with pytest.raises(GraphError, match="not a scalar"):
        gd.grad(x * 2.0, [x])


def test_grad_y_of_the_wrong_type_is_an_error():
    x = gd.input("x", (3,), "float64")
    with pytest.raises(GraphError, match="grad_y"):
        gd.grad(x * 2.0, [x], grad_y=gd.input("c", (4,), "float64"))


def test_integer_y_is_an_error():
    i = gd.input("i", (), "int64")
    with pytest.raises(GraphError, match="not floating"):
        gd.grad(i, [i])


def test_grad_adds_nodes_without_touching_the_forward_graph():
    x = gd.input("x", (2,), "float64")
    y = gd.sum(gd.exp(x))
    before = gd.Graph([x], [y]).nodes
    gd.grad(y, [x])
    assert gd.Graph([x], [y]).nodes == before
    assert all(isinstance(n, Node) for n in before)


def test_partial_cotangents_of_a_multi_output_op():
    x = gd.input("x", (5, 2), "float64")
    a, b = gd.split(x, (2, 3), axis=0)
    (g,) = gd.grad(gd.sum(b * b), [x])
    xv = randn(5, 2, seed=7)
    (gv,) = run([x], [g], xv)
    np.testing.assert_allclose(gv, np.concatenate([np.zeros((2, 2)), 2 * xv[2:]]))


def test_gradient_through_a_symbolic_batch():
    x = gd.input("x", (None, 3), "float64")
    w = gd.param("w", randn(3, 2, seed=8))
    loss = gd.mean(gd.square(x @ w))
    gx, gw = gd.grad(loss, [x, w])
    assert gx.shape == ("N", 3) and gw.shape == (3, 2)
    f = gd.function([x], [gx, gw], optimize=False)
    for n in (1, 4):
        xv = randn(n, 3, seed=n)
        gx_v, gw_v = f(xv)
        wv = gd.variable_of(w).value
        np.testing.assert_allclose(gw_v, xv.T @ (2 * xv @ wv) / (n * 2), rtol=1e-12)
        assert gx_v.shape == (n, 3)


# ---- second derivatives --------------------------------------------------------------------

SMOOTH_UNARY = {  # builder, input generator
    "exp": (gd.exp, lambda: randn(3, 4, seed=10)),
    "log": (gd.log, lambda: np.abs(randn(3, 4, seed=11)) + 0.5),
    "sqrt": (gd.sqrt, lambda: np.abs(randn(3, 4, seed=12)) + 0.5),
    "sigmoid": (gd.sigmoid, lambda: randn(3, 4, seed=13) * 2),
    "tanh": (gd.tanh, lambda: randn(3, 4, seed=14)),
    "gelu": (gd.gelu, lambda: randn(3, 4, seed=15) * 2),
    "softplus": (gd.softplus, lambda: randn(3, 4, seed=16) * 2),
    "erf": (gd.erf, lambda: randn(3, 4, seed=17)),
    "square": (gd.square, lambda: randn(3, 4, seed=18)),
    "reciprocal": (lambda x: 1.0 / x, lambda: np.abs(randn(3, 4, seed=19)) + 0.5),
    "pow": (lambda x: x ** 3.0, lambda: np.abs(randn(3, 4, seed=20)) + 0.5),
    "softmax": (lambda x: gd.softmax(x, axis=1), lambda: randn(3, 4, seed=21)),
    "log_softmax": (lambda x: gd.log_softmax(x, axis=0), lambda: randn(3, 4, seed=22)),
    "mean": (lambda x: gd.mean(x * x, axis=1), lambda: randn(3, 4, seed=23)),
}


def _hvp_graph(build, shape):
    """x, v -> Hessian-vector product of sum(c * f(x)) at x along v, and the gradient."""
    x = gd.input("x", shape, "float64")
    v = gd.input("v", shape, "float64")
    y = build(x)
    c = gd.const(np.random.default_rng(99).standard_normal(tuple(y.shape)))
    (g,) = gd.grad(gd.sum(y * c), [x])
    (hv,) = gd.grad(gd.sum(g * v), [x])
    grad_fn = gd.function([x], [g], optimize=False)
    return gd.function([x, v], [hv], optimize=False), grad_fn


@pytest.mark.parametrize("name", sorted(SMOOTH_UNARY))
def test_grad_of_grad_matches_finite_differences(name):
    build, gen = SMOOTH_UNARY[name]
    xv = gen()
    vv = randn(*xv.shape, seed=30)
    hvp, grad_fn = _hvp_graph(build, xv.shape)
    (got,) = hvp(xv, vv)
    eps = 1e-6
    want = (grad_fn(xv + eps * vv)[0] - grad_fn(xv - eps * vv)[0]) / (2 * eps)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SMOOTH_UNARY))
def test_grad_of_grad_matches_torch(name):
    torch = pytest.importorskip("torch")
    build, gen = SMOOTH_UNARY[name]
    torch_fns = {
        "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "sigmoid": torch.sigmoid,
        "tanh": torch.tanh, "gelu": torch.nn.functional.gelu,
        "softplus": torch.nn.functional.softplus, "erf": torch.erf,
        "square": lambda t: t * t, "reciprocal": lambda t: 1.0 / t,
        "pow": lambda t: t ** 3.0, "softmax": lambda t: torch.softmax(t, 1),
        "log_softmax": lambda t: torch.log_softmax(t, 0),
        "mean": lambda t: (t * t).mean(1),
    }
    xv = gen()
    vv = randn(*xv.shape, seed=30)
    hvp, _ = _hvp_graph(build, xv.shape)
    (got,) = hvp(xv, vv)
    xt = torch.tensor(xv, requires_grad=True)
    yt = torch_fns[name](xt)
    c = torch.tensor(np.random.default_rng(99).standard_normal(tuple(yt.shape)))
    (gt,) = torch.autograd.grad((yt * c).sum(), xt, create_graph=True)
    (ht,) = torch.autograd.grad((gt * torch.tensor(vv)).sum(), xt)
    np.testing.assert_allclose(got, ht.numpy(), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("which", ["matmul", "batched-matmul", "gemm"])
def test_grad_of_grad_through_matmul(which):
    shapes = {"matmul": ((3, 4), (4, 2)), "batched-matmul": ((2, 3, 4), (4, 2)),
              "gemm": ((4, 3), (2, 4))}
    sa, sb = shapes[which]
    a = gd.input("a", sa, "float64")
    b = gd.input("b", sb, "float64")
    y = gd.gemm(a, b, trans_a=True, trans_b=True, alpha=0.5) if which == "gemm" else a @ b
    loss = gd.sum(gd.tanh(y))
    ga, gb = gd.grad(loss, [a, b])
    va = gd.input("va", sa, "float64")
    # d/db <grad_a(a, b), va>: a mixed second derivative, through both matmul VJPs
    (h,) = gd.grad(gd.sum(ga * va), [b])
    av, bv, vav = randn(*sa, seed=40), randn(*sb, seed=41), randn(*sa, seed=42)
    (got,) = run([a, b, va], [h], av, bv, vav)
    ga_fn = gd.function([a, b], [ga], optimize=False)
    want = fd_gradient(lambda bb: np.sum(ga_fn(av, bb)[0] * vav), bv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
