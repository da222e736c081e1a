"""The model zoo: parameter counts (torchvision's), names, forward passes and torch parity."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd

# torchvision's parameter counts at 1000 classes
EXPECTED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "googlenet": 6_624_904,
    "mobilenet_v2": 3_504_872,
}


def infer(model, x):
    """Run the inference form of ``model`` on the NumPy executor."""
    graph = model.graph(training=False)
    f = gd.function(list(graph.inputs), list(graph.outputs), training=False)
    return f(x)


def images(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_zoo_model_counts_and_forward(name):
    model = getattr(gd.models, name)(num_classes=1000, input_shape=(3, 64, 64))
    assert model.name == name
    assert model.num_params() == EXPECTED_PARAMS[name]
    (logits,) = infer(model, images(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("name, kw", [
    ("resnet18", {}), ("resnet50", {}), ("googlenet", {}), ("googlenet", {"aux_logits": True}),
    ("mobilenet_v2", {})])
def test_zoo_variables_match_torchvision_state_dict(name, kw):
    pytest.importorskip("torch")
    from tests import zoo_reference

    model = getattr(gd.models, name)(num_classes=1000, input_shape=(3, 64, 64), **kw)
    ours = {v.name: v.value.shape for v in model.variables if not v.name.endswith(".seed")}
    ref = zoo_reference.build(name, 1000, **kw).state_dict()
    theirs = {k: tuple(v.shape) for k, v in ref.items() if not k.endswith("num_batches_tracked")}
    assert ours == theirs


def test_googlenet_aux_heads():
    model = gd.models.googlenet(num_classes=1000, input_shape=(3, 64, 64), aux_logits=True)
    assert model.num_params() == 13_004_888
    assert [v.name for v in model.outputs] == ["fc", "aux2.fc2", "aux1.fc2"]
    outs = infer(model, images(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 1000)] * 3


def _copy_to_torch(model, module):
    import torch

    state = {v.name: torch.from_numpy(v.value.copy()) for v in model.variables
             if not v.name.endswith(".seed")}
    module = module.double()  # before loading, so float64 weights are not rounded to float32
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return module.eval()


def _randomize_state(model, seed=0):
    """He-scaled weights (GoogLeNet's std-0.01 init would shrink activations to nothing, and
    the check would compare biases only), random biases and BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        if v.name.endswith(".weight") and v.value.ndim >= 2:
            v.value = rng.normal(0, np.sqrt(2 / np.prod(v.value.shape[1:])), v.value.shape)
        elif v.name.endswith(".running_mean"):
            v.value = rng.normal(0, 0.1, v.value.shape)
        elif v.name.endswith(".running_var"):
            v.value = rng.uniform(0.5, 1.5, v.value.shape)
        elif v.name.endswith(".bias") and v.value.ndim == 1 and v.trainable:
            v.value = rng.normal(0, 0.1, v.value.shape)


@pytest.mark.parametrize("name, kw, size", [
    ("resnet18", {}, 64), ("resnet50", {}, 32), ("googlenet", {"aux_logits": True}, 64),
    ("mobilenet_v2", {}, 64)])
def test_zoo_forward_matches_torch_reimplementation(name, kw, size):
    torch = pytest.importorskip("torch")
    from tests import zoo_reference

    model = getattr(gd.models, name)(num_classes=10, input_shape=(3, size, size),
                                     dtype="float64", seed=1, **kw)
    _randomize_state(model)
    module = _copy_to_torch(model, zoo_reference.build(name, 10, **kw))
    x = images(2, 3, size, size, dtype=np.float64)
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    refs = ref if isinstance(ref, tuple) else (ref,)
    for got, want in zip(infer(model, x), refs):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-8, atol=1e-9)


def test_cnn_layout_and_torch_equivalent():
    torch = pytest.importorskip("torch")
    from torch import nn

    model = gd.models.cnn(num_classes=10, input_shape=(1, 8, 8), dtype="float64")
    assert model.num_params() == 53_098
    assert [v.name for v in model.trainable_variables] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    _randomize_state(model)
    ref = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1, bias=False),
                        nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).double().eval()
    params = [p for k, p in ref.state_dict().items() if not k.endswith("num_batches_tracked")]
    ours = [v for v in model.variables if not v.name.endswith(".seed")]
    with torch.no_grad():
        for p, v in zip(params, ours, strict=True):
            p.copy_(torch.from_numpy(v.value))
    x = images(5, 1, 8, 8, dtype=np.float64)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(infer(model, x)[0], want, rtol=1e-9, atol=1e-12)


def test_small_models_build_and_run():
    cnn32 = gd.models.cnn(num_classes=10, input_shape=(3, 32, 32))
    assert cnn32.num_params() == 545_194
    assert infer(cnn32, images(2, 3, 32, 32))[0].shape == (2, 10)
    mlp = gd.models.mlp(num_classes=10, input_shape=(784,))
    assert mlp.num_params() == 669_706
    assert [v.name for v in mlp.variables][:2] == ["fc1.weight", "fc1.bias"]
    assert infer(mlp, images(2, 784))[0].shape == (2, 10)
    flat = gd.models.mlp(num_classes=3, input_shape=(1, 8, 8), hidden=(16,), dropout=0.1)
    assert flat.num_params() == 64 * 16 + 16 + 16 * 3 + 3
    assert infer(flat, images(2, 1, 8, 8))[0].shape == (2, 3)


def test_training_form_carries_state_updates():
    model = gd.models.cnn(num_classes=10, input_shape=(1, 8, 8), dropout=0.5)
    train = model.graph(training=True)
    assert sorted(var.name for var, _ in train.updates) == [
        "bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var",
        "dropout.seed"]
    assert not model.graph(training=False).updates
    assert model.num_params(trainable_only=False) == model.num_params() + 2 * (32 + 64) + 1


def test_zoo_initialization_is_seeded():
    def weights(seed):
        return [v.value for v in gd.models.cnn(seed=seed).variables]

    assert all(np.array_equal(a, b) for a, b in zip(weights(0), weights(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(weights(0), weights(1)))


def test_zoo_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"resnet18: input_shape must be \(C, H, W\)"):
        gd.models.resnet18(input_shape=(64, 64))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        gd.models.mobilenet_v2(num_classes=0)
    with pytest.raises(ValueError, match=r"cnn: input_shape must be \(C, H, W\)"):
        gd.models.cnn(input_shape=(64,))


def test_resnet_width_keeps_the_architecture():
    """``width`` scales every stage's channels; the layers, their names and the blocks stay."""
    full = gd.models.resnet18(num_classes=10, input_shape=(3, 32, 32))
    thin = gd.models.resnet18(num_classes=10, input_shape=(3, 32, 32), width=4)
    assert [v.name for v in thin.variables] == [v.name for v in full.variables]
    shapes = {v.name: v.value.shape for v in thin.variables}
    assert shapes["conv1.weight"] == (4, 3, 7, 7)
    assert shapes["layer4.1.conv2.weight"] == (32, 32, 3, 3)
    assert shapes["fc.weight"] == (10, 32)  # torch layout: (out, in)
    assert thin.predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="resnet18: width must be a positive channel count"):
        gd.models.resnet18(width=0)
