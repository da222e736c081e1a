"""The ONNX Runtime backend: provider choice (quiet "auto", clear "cuda" errors), threads and
optimization level, I/O binding, feeds, state write-back, and ``gd.compile``."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends import ort as ort_backend
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.ort import OrtRunner, ProviderError, cuda_available
from graphdl.compiled_function import FeedError


def _graph(seed: int = 0):
    g = np.random.default_rng(seed)
    x = gd.input("x", (None, 4))
    w = gd.param("fc.weight", g.standard_normal((4, 3)).astype(np.float32))
    b = gd.param("fc.bias", g.standard_normal(3).astype(np.float32))
    return gd.Graph([x], [gd.softmax(gd.tanh(gd.matmul(x, w) + b))], name="tiny")


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 4)).astype(np.float32)


def test_auto_picks_a_usable_provider_quietly(capfd):
    """On a CPU-only machine with onnxruntime-gpu, "auto" chooses CPU and logs nothing."""
    cuda_available.cache_clear()
    run = gd.compile(_graph(), providers="auto")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert run.device == ("cuda" if cuda_available() else "cpu")
    if run.device == "cpu":
        assert run.providers == ["CPUExecutionProvider"]


def test_cuda_when_unusable_is_a_clear_error(capfd):
    if cuda_available():
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(ProviderError, match="providers='cuda'.*not usable"):
        gd.compile(_graph(), providers="cuda")
    assert capfd.readouterr() == ("", "")


def test_bad_provider_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="providers='tpu'"):
        gd.compile(_graph(), providers="tpu")
    with pytest.raises(ValueError, match="optimization_level='max'"):
        gd.compile(_graph(), providers="cpu", optimization_level="max")
    with pytest.raises(ValueError, match="threads=0"):
        gd.compile(_graph(), providers="cpu", threads=0)
    with pytest.raises(ValueError, match="backend='tvm'"):
        gd.compile(_graph(), backend="tvm")


@pytest.mark.parametrize("level,expected", [
    ("disable", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)])
def test_threads_and_optimization_level_are_applied(level, expected):
    run = gd.compile(_graph(), providers="cpu", threads=1, optimization_level=level)
    options = run.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == expected
    np.testing.assert_allclose(run(_x()), gd.compile(_graph(), backend="numpy")(_x()),
                               rtol=1e-5, atol=1e-6)


def test_optimized_model_is_written_when_asked(tmp_path):
    path = tmp_path / "opt.onnx"
    gd.compile(_graph(), providers="cpu", optimization_level="basic",
               optimized_model_path=str(path))
    assert path.exists() and path.stat().st_size > 0


def test_matches_numpy_executor_by_position_and_name():
    graph = _graph()
    numpy_run = gd.compile(graph, backend="numpy")
    run = gd.compile(graph, providers="cpu")
    x = _x(6)
    np.testing.assert_allclose(run(x), numpy_run(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(x=x), numpy_run(x), rtol=1e-5, atol=1e-6)


def test_feeds_are_checked():
    run = gd.compile(_graph(), providers="cpu")
    with pytest.raises(FeedError, match="float32"):
        run(_x().astype(np.float64))
    with pytest.raises(FeedError, match="shape"):
        run(np.zeros((2, 5), np.float32))
    with pytest.raises(FeedError, match="unknown input"):
        run(y=_x())


def test_io_binding_on_cpu_gives_the_same_results():
    graph = _graph()
    plain = gd.compile(graph, providers="cpu", io_binding=False)
    bound = gd.compile(graph, providers="cpu", io_binding=True)
    assert bound.io_binding and not plain.io_binding
    np.testing.assert_allclose(bound(_x()), plain(_x()), rtol=1e-6)
    (value,) = bound.run_ortvalues(_x())
    assert isinstance(value, ort.OrtValue)
    np.testing.assert_allclose(value.numpy(), plain(_x()), rtol=1e-6)


def test_float16_runner_takes_and_returns_float32():
    graph = _graph()
    run = gd.compile(graph, providers="cpu", dtype="float16")
    out = run(_x())
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, gd.compile(graph, backend="numpy")(_x()), atol=5e-3)


def _train_step_graph():
    g = np.random.default_rng(3)
    x = gd.input("x", (None, 4))
    w = gd.param("w", g.standard_normal((4, 2)).astype(np.float32))
    loss = gd.mean(gd.square(gd.matmul(x, w)))
    (gw,) = gd.grad(loss, [w])
    return gd.Graph([x], [loss], updates=[(gd.variable_of(w), w - 0.1 * gw)]), \
        gd.variable_of(w)


@pytest.mark.parametrize("io_binding", [False, True])
def test_training_step_state_is_written_back(io_binding):
    graph, var = _train_step_graph()
    start = var.value.copy()
    numpy_step = gd.compile(graph, backend="numpy", optimize=False)
    want = [numpy_step(_x()) for _ in range(3)]
    after_numpy = var.value.copy()
    var.value = start.copy()
    run = gd.compile(graph, providers="cpu", optimize=False, io_binding=io_binding)
    got = [run(_x()) for _ in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(var.value, after_numpy, rtol=1e-5)


def test_state_can_stay_in_runtime_buffers():
    graph, var = _train_step_graph()
    start = var.value.copy()
    run = gd.compile(graph, providers="cpu", optimize=False, io_binding=True, sync_state=False)
    run(_x())
    run(_x())
    np.testing.assert_array_equal(var.value, start)  # not synced yet
    run.sync_state_to_variables()
    assert not np.allclose(var.value, start)


def test_runner_from_an_onnx_model_and_file(tmp_path):
    graph = _graph()
    model = to_onnx(graph)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    want = gd.compile(graph, backend="numpy")(_x())
    for source in (model, str(path)):
        run = OrtRunner(source, providers="cpu")
        np.testing.assert_allclose(run(_x()), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(FeedError, match="inputs"):
        OrtRunner(model, providers="cpu")()


def test_resolve_providers_lists():
    assert ort_backend.resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert ort_backend.resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_compile_a_zoo_model_matches_numpy_backend():
    model = gd.models.cnn(num_classes=3, input_shape=(1, 8, 8), channels=(4,), hidden=8)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(gd.compile(model, providers="cpu")(x),
                               gd.compile(model, backend="numpy")(x), rtol=1e-5, atol=1e-6)


def test_models_over_the_protobuf_limit_run_from_external_data(monkeypatch):
    from graphdl.backends import onnx_save
    monkeypatch.setattr(onnx_save, "PROTOBUF_LIMIT", 16)  # every model counts as "large"
    graph = _graph()
    run = gd.compile(graph, providers="cpu")
    assert run._files is not None
    np.testing.assert_allclose(run(_x()), gd.compile(graph, backend="numpy")(_x()), rtol=1e-5)
