"""Loss functions against torch, their stable forms, the name lookup and target checks."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl import losses

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _value_and_grad(build, *arrays):
    """Loss value and gradient wrt the first array, through the graphdl executor."""
    ins = [gd.input(f"in{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    loss = build(*ins)
    (g,) = gd.grad(loss, [ins[0]])
    return gd.function(ins, [loss, g])(*arrays)


def _torch_value_and_grad(build, first, *rest):
    t = torch.tensor(first, requires_grad=True)
    loss = build(t, *[torch.tensor(a) for a in rest])
    loss.backward()
    return loss.item(), t.grad.numpy()


def _check(ours, theirs, *arrays, rtol=1e-10):
    loss, grad = _value_and_grad(ours, *arrays)
    t_loss, t_grad = _torch_value_and_grad(theirs, *arrays)
    np.testing.assert_allclose(loss, t_loss, rtol=rtol)
    np.testing.assert_allclose(grad, t_grad, rtol=rtol, atol=1e-14)


def test_cross_entropy_matches_torch_and_is_stable():
    r = np.random.default_rng(0)
    z = r.normal(size=(6, 4)) * 5
    z[1] += 1000.0  # exp(1000) overflows; the log-softmax form does not
    y = r.integers(0, 4, 6)
    _check(losses.cross_entropy, lambda a, b: TF.cross_entropy(a, b), z, y)


def test_categorical_cross_entropy_matches_torch_soft_targets():
    r = np.random.default_rng(1)
    z = r.normal(size=(5, 3))
    t = r.dirichlet(np.ones(3), size=5)
    _check(losses.categorical_cross_entropy, lambda a, b: TF.cross_entropy(a, b), z, t)


def test_binary_cross_entropy_with_logits_matches_torch_at_extremes():
    z = np.array([[-800.0, -3.0], [0.5, 900.0]])
    t = np.array([[1.0, 0.0], [0.3, 0.0]])
    _check(losses.binary_cross_entropy_with_logits,
           lambda a, b: TF.binary_cross_entropy_with_logits(a, b), z, t)


def test_binary_cross_entropy_on_probabilities_matches_torch():
    p = np.array([[0.2, 0.9], [0.5, 0.01]])
    t = np.array([[0.0, 1.0], [1.0, 0.0]])
    _check(losses.binary_cross_entropy, lambda a, b: TF.binary_cross_entropy(a, b), p, t)


def test_binary_cross_entropy_clamps_log_like_torch():
    p = np.array([0.0, 1.0, 0.5])
    t = np.array([1.0, 0.0, 1.0])
    loss, grad = _value_and_grad(losses.binary_cross_entropy, p, t)
    assert loss == pytest.approx(TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t)).item())
    assert np.isfinite(grad).all()


def test_mse_and_mae_match_torch():
    r = np.random.default_rng(2)
    a, b = r.normal(size=(4, 3)), r.normal(size=(4, 3))
    _check(losses.mse, lambda x, y: TF.mse_loss(x, y), a, b)
    _check(losses.mae, lambda x, y: TF.l1_loss(x, y), a, b)


def test_softmax_and_sigmoid_outputs_use_their_logits():
    """Keras-style models ending in softmax/sigmoid get the stable loss on the logits."""
    x = gd.input("x", (None, 3), "float64")
    y = gd.input("y", (None,), "int64")
    probs = gd.softmax(x)
    loss = losses.get("sparse_categorical_crossentropy")(probs, y)
    assert loss.node.inputs[0] == x
    t = gd.input("t", (None, 3), "float64")
    bce = losses.get("binary_crossentropy")(gd.sigmoid(x), t)
    assert "Softplus" in gd.Graph([x, t], [bce]).op_counts()


def test_get_resolves_names_losses_and_functions():
    assert losses.get("cross_entropy") is losses.get("sparse_categorical_crossentropy")
    assert losses.get("MSE").name == "mse"
    assert losses.get(losses.mse).name == "mse"
    custom = losses.get(lambda out, t: gd.mean(gd.abs(out - t)))
    assert custom.targets == "values"
    with pytest.raises(ValueError, match="unknown loss 'crossentropy'.*cross_entropy"):
        losses.get("crossentropy")
    with pytest.raises(TypeError):
        losses.get(3)


def test_check_targets_errors_name_the_problem():
    out = gd.input("logits", (None, 4))
    ce = losses.get("cross_entropy")
    np.testing.assert_array_equal(ce.check_targets(np.array([0, 3, 1]), out), [0, 3, 1])
    np.testing.assert_array_equal(ce.check_targets(np.array([[0.0], [2.0]]), out), [0, 2])
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 3\].*y\[1\] = 4"):
        ce.check_targets(np.array([0, 4, -1]), out)
    with pytest.raises(ValueError, match="look one-hot"):
        ce.check_targets(np.eye(4)[[0, 1]], out)
    with pytest.raises(ValueError, match="non-integer"):
        ce.check_targets(np.array([0.5, 1.0]), out)
    with pytest.raises(ValueError, match="dtype <U1"):
        ce.check_targets(np.array(["a", "b"]), out)
    bce = losses.get("binary_cross_entropy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce.check_targets(np.full((2, 4), 2.0), out)
    with pytest.raises(ValueError, match="each target must be"):
        losses.get("mse").check_targets(np.zeros((2, 3)), out)
    single = gd.input("score", (None, 1))
    assert losses.get("mse").check_targets(np.zeros(5), single).shape == (5, 1)


def test_huge_labels_and_nan_targets_are_reported_as_given():
    """1e20 is shown as 1e+20 (not the int64 wrap-around); NaN targets refuse clearly."""
    out = gd.input("logits", (None, 4))
    ce = losses.get("cross_entropy")
    with pytest.raises(ValueError, match=r"y\[1\] = 1e\+20 \(1 bad"):
        ce.check_targets(np.array([0.0, 1e20]), out)
    with pytest.raises(ValueError, match=r"y\[0\] = nan"):
        ce.check_targets(np.array([np.nan, 1.0]), out)
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at sample 1\)"):
        losses.get("mse").check_targets(np.array([[0.0] * 4, [np.inf] * 4]), out)
    model = gd.Sequential([gd.layers.Dense(1)], input_shape=(2,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.evaluate(np.zeros((2, 2), np.float32), np.array([1.0, np.nan]))


def test_softmax_cross_entropy_op_rejects_bad_types():
    z = gd.input("z", (None, 4))
    with pytest.raises(gd.ShapeError, match="integer class indices"):
        gd.softmax_cross_entropy(z, gd.input("y", (None,), "float32"))
    with pytest.raises(gd.ShapeError, match=r"\(N, C\)"):
        gd.softmax_cross_entropy(gd.input("z3", (2, 3, 4)), gd.input("y3", (2,), "int64"))
    with pytest.raises(gd.ShapeError, match="3 rows of logits but 2 labels"):
        gd.softmax_cross_entropy(gd.input("z2", (3, 4)), gd.input("y2", (2,), "int64"))
    with pytest.raises(ValueError, match="reduction"):
        gd.softmax_cross_entropy(z, gd.input("y4", (None,), "int64"), reduction="avg")


def test_out_of_range_labels_fail_at_run_time_naming_the_op():
    z = gd.input("z", (None, 3), "float64")
    y = gd.input("y", (None,), "int64")
    f = gd.function([z, y], [gd.softmax_cross_entropy(z, y)])
    with pytest.raises(Exception, match=r"SoftmaxCrossEntropy.*\[0, 3\).*\[5\]"):
        f(np.zeros((2, 3)), np.array([0, 5]))
