"""The ORT session settings of a train step: the measured defaults
(``ort_train.TRAIN_SESSION_SETTINGS``) are the ones every train-step session gets, a caller's
overrides reach the session, a misspelt setting is refused, and no setting changes results."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends.ort import session_options
from graphdl.backends.ort_train import TRAIN_SESSION_SETTINGS, OrtFunction


def _model():
    return gd.models.cnn(num_classes=10, input_shape=(3, 8, 8), channels=(4, 8), hidden=16,
                         seed=0)


def _data():
    r = np.random.default_rng(0)
    return r.normal(size=(8, 3, 8, 8)).astype(np.float32), r.integers(0, 10, 8)


def _assert_applied(options: ort.SessionOptions, settings: dict) -> None:
    for key, value in settings.items():
        if "." in key:
            assert options.get_session_config_entry(key) == str(value), key
        else:
            assert getattr(options, key) == value, key


def test_fit_sessions_get_the_train_step_settings():
    model = _model()
    model.compile(gd.optim.SGD(0.01, momentum=0.9), "cross_entropy", backend="onnxruntime",
                  providers="cpu", threads=1)
    x, y = _data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    fn = model._train_function()
    assert isinstance(fn, OrtFunction)
    assert fn.session_settings == TRAIN_SESSION_SETTINGS
    _assert_applied(fn.session.get_session_options(), TRAIN_SESSION_SETTINGS)


def test_overrides_reach_the_session_and_change_no_result():
    x, y = _data()
    losses = {}
    overrides = {"session.intra_op.allow_spinning": "0", "session.set_denormal_as_zero": "1",
                 "enable_mem_pattern": False}
    for name, extra in (("defaults", None), ("overridden", overrides)):
        model = _model()
        model.compile(gd.optim.SGD(0.01, momentum=0.9), "cross_entropy")
        graph = model.train_step_graph(model.loss, model.optimizer)
        fn = OrtFunction(graph, providers="cpu", threads=1, session_settings=extra)
        if extra:
            _assert_applied(fn.session.get_session_options(), extra)
            assert fn.session_settings == {**TRAIN_SESSION_SETTINGS, **extra}
        losses[name] = [float(fn(x, y)[0]) for _ in range(3)]
    np.testing.assert_allclose(losses["overridden"], losses["defaults"], rtol=1e-6)


@pytest.mark.parametrize("bad", [{"enable_mem_patern": False}, {"nonsense": 1}])
def test_a_misspelt_setting_is_refused(bad):
    with pytest.raises(ValueError, match="session setting"):
        session_options(1, settings=bad)
