"""Property test: random well-typed graphs of elementwise, matmul and reduce ops have
gradients that match central finite differences (float64)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphdl as gd

INPUT_SHAPES = [(2, 3), (3,), (1, 3), (2, 1), (), (3, 2)]
UNARY = {
    "tanh": gd.tanh, "sigmoid": gd.sigmoid, "softplus": gd.softplus, "gelu": gd.gelu,
    "erf": gd.erf, "neg": gd.neg, "square": gd.square,
    "exp_tanh": lambda v: gd.exp(gd.tanh(v)),  # exp, kept bounded so chains stay finite
    "log1p_sq": lambda v: gd.log(1.0 + v * v),
    "sqrt1p_sq": lambda v: gd.sqrt(1.0 + v * v),
}
BINARY = {
    "add": gd.add, "sub": gd.sub, "mul": gd.mul,
    "div": lambda a, b: a / (1.5 + gd.tanh(b)),  # the denominator stays in [0.5, 2.5]
    "pow": lambda a, b: gd.pow(1.0 + gd.sigmoid(a), gd.tanh(b)),
}
REDUCE = {"sum": gd.sum, "mean": gd.mean, "max": gd.max, "min": gd.min}


def _broadcasts(a, b) -> bool:
    try:
        np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
        return True
    except ValueError:
        return False


def _build_step(data, values):
    """Append one randomly chosen, well-typed op over existing values."""
    kind = data.draw(st.sampled_from(["unary", "binary", "matmul", "reduce", "softmax"]))
    pick = lambda pool: pool[data.draw(st.integers(0, len(pool) - 1))]  # noqa: E731
    if kind == "unary":
        fn = UNARY[data.draw(st.sampled_from(sorted(UNARY)))]
        return fn(pick(values))
    if kind == "binary":
        a = pick(values)
        partners = [v for v in values if _broadcasts(a, v)]
        return BINARY[data.draw(st.sampled_from(sorted(BINARY)))](a, pick(partners))
    if kind == "matmul":
        pairs = [(a, b) for a in values for b in values
                 if a.ndim == 2 and b.ndim == 2 and a.shape[1] in (b.shape[0], b.shape[1])]
        if not pairs:
            return None
        a, b = pick(pairs)
        return a @ (b if a.shape[1] == b.shape[0] else gd.transpose(b))
    x = pick([v for v in values if v.ndim >= 1] or [None])
    if x is None:
        return None
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    if kind == "softmax":
        return gd.softmax(x, axis=axis)
    keep = data.draw(st.booleans())
    return REDUCE[data.draw(st.sampled_from(sorted(REDUCE)))](x, axis, keep)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_graph_gradients_match_finite_differences(data):
    n_inputs = data.draw(st.integers(1, 3))
    shapes = [data.draw(st.sampled_from(INPUT_SHAPES)) for _ in range(n_inputs)]
    inputs = [gd.input(f"x{i}", s, "float64") for i, s in enumerate(shapes)]
    values = list(inputs)
    for _ in range(data.draw(st.integers(1, 6))):
        v = _build_step(data, values)
        if v is not None:
            values.append(v)
    # every value feeds the loss, so gradients flow through every op that was built
    seed = data.draw(st.integers(0, 2 ** 16))
    g = np.random.default_rng(seed)
    loss = None
    for v in values[n_inputs:] or values:
        term = gd.sum(v * gd.const(g.standard_normal(tuple(v.shape))))
        loss = term if loss is None else loss + term
    grads = gd.grad(loss, inputs)
    f_loss = gd.function(inputs, loss, optimize=False)
    f_grad = gd.function(inputs, grads, optimize=False)
    arrays = [np.asarray(g.standard_normal(s)) for s in shapes]
    analytic = f_grad(*arrays)
    eps = 1e-6
    for i, base in enumerate(arrays):
        numeric = np.zeros(base.size)
        for j in range(base.size):
            plus, minus = base.copy(), base.copy()
            plus.flat[j] += eps
            minus.flat[j] -= eps
            numeric[j] = (f_loss(*arrays[:i], plus, *arrays[i + 1:])
                          - f_loss(*arrays[:i], minus, *arrays[i + 1:])) / (2 * eps)
        scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
        np.testing.assert_allclose(np.ravel(analytic[i]), numeric, rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=f"gradient wrt input {i}")
