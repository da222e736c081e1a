"""Untrusted ONNX files: the external-data path policy (graphdl's own, whatever onnx does),
import-time evaluation budgets (the Loop and ConstantOfShape bombs), header rules, and
clean one-line refusals. Each case is an attack or a careless-user file seen in the wild."""
from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphdl as gd
from graphdl.backends.import_budget import ImportBudget
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_external import UnsafeExternalData, resolve_location
from graphdl.backends.onnx_file import OnnxFileError, read_model
from graphdl.backends.onnx_import import OnnxImportError, from_onnx
from graphdl.backends.onnx_info import describe


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    graph = helper.make_graph(nodes, "hand", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir)


def _gemm_model(location, length=48, offset=None):
    """x (1, 3) @ W (3, 4) with W stored externally at ``location``."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("length", str(length))]
    if offset is not None:
        entries.append(("offset", str(offset)))
    for k, v in entries:
        e = w.external_data.add()
        e.key, e.value = k, v
    return _model([helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm")],
                  [_vi("x", [1, 3])], [_vi("y", [1, 4])], [w])


def _write(folder, model, name="model.onnx"):
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _all_entry_points(path):
    """The three ways a user opens a file: import, info, optimize."""
    from graphdl.optimization import cli_optimize

    out = path.parent / "out.onnx"
    for call in (lambda: from_onnx(path), lambda: describe(path),
                 lambda: cli_optimize(path, out)):
        with pytest.raises(OnnxImportError) as err:
            call()
        assert "\n" not in str(err.value)
        yield str(err.value)
    assert not out.exists()


# ---- external data: the path policy ----------------------------------------------------------

def test_symlink_to_a_file_outside_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    (folder / "weights.bin").symlink_to(secret)
    path = _write(folder, _gemm_model("weights.bin"))
    for message in _all_entry_points(path):
        assert "escapes the model's folder" in message and "weights.bin" in message


def test_symlinked_folder_escape_is_refused(tmp_path):
    folder, outside = tmp_path / "m", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (outside / "w.bin").write_bytes(bytes(48))
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    path = _write(folder, _gemm_model("sub/w.bin"))
    for message in _all_entry_points(path):
        assert "escapes the model's folder" in message


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "a/../../secret.bin",
                                      "\\\\server\\share", ""])
def test_absolute_and_parent_locations_are_refused(tmp_path, location):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(bytes(64))
    path = _write(folder, _gemm_model(location))
    for message in _all_entry_points(path):
        assert "location" in message


def test_device_files_and_fifos_are_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "zero").symlink_to("/dev/zero")
    path = _write(folder, _gemm_model("zero"))
    for message in _all_entry_points(path):
        assert "escapes the model's folder" in message
    os.mkfifo(folder / "pipe")
    path = _write(folder, _gemm_model("pipe"))
    start = time.monotonic()
    for message in _all_entry_points(path):
        assert "not a regular file" in message
    assert time.monotonic() - start < 10  # a FIFO never blocks the reader


def test_ranges_and_lengths_are_checked_before_reading(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(bytes(48))
    ok = _write(folder, _gemm_model("w.bin"))
    assert from_onnx(ok) is not None
    for model, pattern in ((_gemm_model("w.bin", offset=8), "outside 'w.bin'"),
                           (_gemm_model("w.bin", length=2 ** 40), "does not match its dims"),
                           (_gemm_model("w.bin", offset=2 ** 62), "outside 'w.bin'"),
                           (_gemm_model("missing.bin"), "does not exist")):
        path = _write(folder, model, "bad.onnx")
        for message in _all_entry_points(path):
            assert pattern in message


def test_oversize_declared_tensor_is_refused_without_reading(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(bytes(48))
    model = _gemm_model("w.bin", length=48)
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend([2 ** 20, 2 ** 20])
    path = _write(folder, model)
    for message in _all_entry_points(path):
        assert "does not match its dims" in message


def test_unknown_external_data_keys_are_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(bytes(48))
    model = _gemm_model("w.bin")
    e = model.graph.initializer[0].external_data.add()
    e.key, e.value = "basepath", "/etc"
    path = _write(folder, model)
    for message in _all_entry_points(path):
        assert "unknown external data key 'basepath'" in message


def test_policy_holds_independently_of_onnx(tmp_path):
    """The policy function itself, without onnx's checks in the way."""
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.bin").write_bytes(b"x")
    assert resolve_location(folder, "sub/w.bin") == os.path.realpath(folder / "sub" / "w.bin")
    assert resolve_location(folder, "./sub/../sub/w.bin").endswith("w.bin")
    for bad in ("..", "../m/sub/w.bin/../../../x", "/abs", "sub/\0", ".", "sub/.."):
        with pytest.raises(UnsafeExternalData):
            resolve_location(folder, bad)


def test_external_data_round_trip_still_works(tmp_path):
    x = gd.input("x", (None, 8))
    w = gd.param("big.weight", np.random.default_rng(0).standard_normal((8, 300), np.float32))
    graph = gd.Graph([x], [gd.relu(gd.matmul(x, w))])
    path = gd.export_onnx(graph, tmp_path / "m.onnx", external_data=True, optimize=False)
    imported = from_onnx(path)
    feed = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(NumpyExecutor(imported).run([feed])[0],
                               NumpyExecutor(graph).run([feed])[0], rtol=1e-6)
    assert describe(path)["external_data"]


# ---- budgets on import-time evaluation --------------------------------------------------------

def _loop_bomb(trip=2 ** 62):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
                 _vi("v_in", [1])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(trip, np.int64), "M"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.zeros(1, np.float32), "v0")]
    loop = helper.make_node("Loop", ["M", "cond", "v0"], ["v"], name="bomb", body=body)
    add = helper.make_node("Add", ["x", "v"], ["y"], name="use")
    return _model([loop, add], [_vi("x", [1])], [_vi("y", [1])], inits)


def test_loop_bomb_is_refused_at_once(tmp_path):
    """A 360-byte Loop with trip count 2^62: refused before any iteration, naming the node."""
    path = _write(tmp_path, _loop_bomb())
    assert path.stat().st_size < 600
    start = time.monotonic()
    with pytest.raises(OnnxImportError, match=r"'bomb' \(Loop\).*trip count "
                                              r"4,611,686,018,427,387,904.*max_loop_iterations"):
        from_onnx(path)
    assert time.monotonic() - start < 5


def test_small_loops_unroll_within_the_budget(tmp_path):
    path = _write(tmp_path, _loop_bomb(trip=50))
    graph = from_onnx(path)
    np.testing.assert_array_equal(NumpyExecutor(graph).run([np.zeros(1, np.float32)])[0],
                                  [50.0])
    with pytest.raises(OnnxImportError, match="max_loop_iterations"):
        from_onnx(path, budget=ImportBudget(max_loop_iterations=10))


def test_loop_and_scan_budgets_are_checked_before_a_first_iteration():
    """The meter refuses trip counts and sequence lengths over the budget up front (graphdl
    has no Loop/Scan rule yet; any future one goes through this check)."""
    from graphdl.backends.import_budget import BudgetExceeded, FoldMeter

    loop = helper.make_node("Loop", ["M", "c"], [], name="bomb")
    meter = FoldMeter(ImportBudget(max_loop_iterations=100))
    meter.precheck(loop, [np.array(100, np.int64), np.array(True)])
    with pytest.raises(BudgetExceeded, match=r"trip count 4,611,686,018,427,387,904.*"
                                             r"max_loop_iterations"):
        meter.precheck(loop, [np.array(2 ** 62, np.int64), np.array(True)])
    scan = helper.make_node("Scan", ["s"], ["o"], name="scan")
    with pytest.raises(BudgetExceeded, match="sequence length 1,000"):
        meter.precheck(scan, [np.zeros((1000, 2), np.float32)])
    meter = FoldMeter(ImportBudget(max_steps=2))
    relu = helper.make_node("Relu", ["x"], ["y"], name="r")
    meter.precheck(relu, [np.zeros(2, np.float32)])
    meter.precheck(relu, [np.zeros(2, np.float32)])
    with pytest.raises(BudgetExceeded, match="max_steps"):
        meter.precheck(relu, [np.zeros(2, np.float32)])


def test_range_bomb_in_shape_arithmetic_is_refused_naming_node_and_budget(tmp_path):
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("a", 0), ("b", 2 ** 62), ("d", 1))]
    nodes = [helper.make_node("Range", ["a", "b", "d"], ["r"], name="range_bomb"),
             helper.make_node("Reshape", ["x", "r"], ["y"], name="use")]
    path = _write(tmp_path, _model(nodes, [_vi("x", [2])], [_vi("y", [2])], inits))
    start = time.monotonic()
    with pytest.raises(OnnxImportError, match=r"'range_bomb' \(Range\).*32,768\.0 PiB|"
                                              r"'range_bomb' \(Range\).*max_fold_bytes"):
        from_onnx(path)
    assert time.monotonic() - start < 5


def test_broadcast_bomb_of_small_constants_becomes_a_runtime_node(tmp_path):
    """(2048, 1) + (1, 2048) int64 constants: 32 MiB if folded; kept as a runtime Add."""
    import tracemalloc

    inits = [numpy_helper.from_array(np.arange(2048, dtype=np.int64).reshape(2048, 1), "a"),
             numpy_helper.from_array(np.arange(2048, dtype=np.int64).reshape(1, 2048), "b")]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="grid"),
             helper.make_node("ReduceSum", ["s"], ["t"], name="total", keepdims=0),
             helper.make_node("Cast", ["t"], ["tf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "tf"], ["y"], name="use")]
    path = _write(tmp_path, _model(nodes, [_vi("x", [])], [_vi("y", [])], inits))
    tracemalloc.start()
    try:
        graph = from_onnx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20
    assert "Add" in {n.op for n in graph.nodes}
    folded = gd.import_onnx(path, budget=gd.ImportBudget(max_fold_bytes=1 << 30)).graph()
    assert len(folded.nodes) < len(graph.nodes)  # with a raised budget it folds
    x = np.array(1.0, np.float32)
    want = 1.0 + 2 * 2048 * (2047 * 2048 // 2)
    for g in (graph, folded):
        assert NumpyExecutor(g).run([x])[0] == np.float32(want)


def _constant_of_shape_bomb(dims=(2 ** 14, 2 ** 14, 2)):
    shape = numpy_helper.from_array(np.array(dims, np.int64), "shape")
    cos = helper.make_node("ConstantOfShape", ["shape"], ["big"], name="bomb",
                           value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    red = helper.make_node("ReduceSum", ["big"], ["s"], name="sum", keepdims=0)
    add = helper.make_node("Add", ["x", "s"], ["y"], name="use")
    return _model([cos, red, add], [_vi("x", [])], [_vi("y", [])], [shape], opset=13)


def test_constant_of_shape_bomb_is_not_materialised(tmp_path):
    """A 150-byte model declaring a 2 GiB constant imports with the constant left as a
    runtime node; nothing near its size is allocated."""
    import tracemalloc

    path = _write(tmp_path, _constant_of_shape_bomb())
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        graph = from_onnx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20
    assert "Const" in {n.op for n in graph.nodes}
    small = _write(tmp_path, _constant_of_shape_bomb((3, 4)), "small.onnx")
    out = NumpyExecutor(from_onnx(small)).run([np.array(1.0, np.float32)])[0]
    assert out == 13.0


def test_constant_of_shape_bomb_through_the_cli(tmp_path):
    from graphdl.cli import main

    path = _write(tmp_path, _constant_of_shape_bomb())
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx")]) == 0
    assert (tmp_path / "o.onnx").stat().st_size < 10_000


def test_budget_parse_and_validation():
    b = ImportBudget.parse("fold_mb=64, loop=1e5,seconds=2.5")
    assert b.max_fold_bytes == 64 << 20 and b.max_loop_iterations == 100_000
    assert b.max_seconds == 2.5
    with pytest.raises(ValueError, match="keys"):
        ImportBudget.parse("bogus=1")
    with pytest.raises(ValueError, match=">= 0"):
        ImportBudget(max_steps=-1)


# ---- headers and undecodable files ----------------------------------------------------------

def _relu_model(**kw):
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [2])],
                  [_vi("y", [2])], **kw)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda m: m.ClearField("opset_import"), "no opset_import"),
    (lambda m: m.opset_import[0].__setattr__("version", 0), "opset 0"),
    (lambda m: m.opset_import[0].__setattr__("version", -1), "opset -1"),
    (lambda m: m.opset_import[0].__setattr__("version", 99), "opset 99"),
    (lambda m: m.__setattr__("ir_version", -1), "IR version -1"),
    (lambda m: m.__setattr__("ir_version", 0), "no IR version"),
    (lambda m: m.__setattr__("ir_version", 99), "IR version 99"),
    (lambda m: m.opset_import[0].__setattr__("domain", "com.other"), "no entry for the ONNX"),
    (lambda m: m.graph.input[0].type.tensor_type.__setattr__("elem_type", 99),
     "element type 99"),
])
def test_invalid_headers_are_refused(tmp_path, mutate, pattern):
    model = _relu_model()
    mutate(model)
    path = _write(tmp_path, model)
    for message in _all_entry_points(path):
        assert pattern in message and str(path) in message


@pytest.mark.parametrize("content, pattern", [
    (b"", "empty"), (b"hello", "not an ONNX model"), (b"\xff" * 64, "not an ONNX model")])
def test_undecodable_files_are_refused(tmp_path, content, pattern):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    for message in _all_entry_points(path):
        assert pattern in message


def test_non_utf8_names_are_refused(tmp_path):
    data = _relu_model().SerializeToString().replace(b"\x1a\x01r", b"\x1a\x01\xff")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    for message in _all_entry_points(path):
        assert "not valid UTF-8" in message


def test_initializer_data_must_match_its_dims(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    w.dims[0] = 1 << 40
    model = _model([helper.make_node("Gemm", ["x", "W"], ["y"], name="g")],
                   [_vi("x", [1, 3])], [_vi("y", [1, 4])], [w])
    path = _write(tmp_path, model)
    with pytest.raises(OnnxFileError, match=r"'W': 48 bytes of data for dims"):
        read_model(path)


@pytest.mark.parametrize("node, pattern", [
    (helper.make_node("Gemm", ["x", "x"], ["y"], name="g", alpha="big"), "'g' \\(Gemm\\)"),
    (helper.make_node("Softmax", ["x"], ["y"], name="s", axis="a"), "'s' \\(Softmax\\)"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="p"), "'p' \\(MaxPool\\)"),
    (helper.make_node("Relu", [], ["y"], name="n"), "'n' \\(Relu\\)"),
])
def test_malformed_nodes_name_the_node_and_op(tmp_path, node, pattern):
    model = _model([node], [_vi("x", [2, 2])], [_vi("y", [2, 2])])
    with pytest.raises(OnnxImportError, match=pattern):
        from_onnx(_write(tmp_path, model))


def test_device_file_as_model_is_refused():
    with pytest.raises(OnnxFileError, match="not a regular file"):
        read_model("/dev/zero")
    with pytest.raises(OnnxFileError, match="no such file"):
        read_model("/nonexistent/model.onnx")


def test_in_memory_models_with_external_references_are_refused():
    model = _gemm_model("w.bin")
    with pytest.raises(OnnxFileError, match="refers to external data"):
        from_onnx(model)
    assert onnx.IR_VERSION >= 3


def test_info_prints_names_as_plain_text(tmp_path, capsys):
    """Rich markup and terminal escapes in a model's names are shown, not interpreted."""
    from graphdl.cli import main

    model = _model([helper.make_node("Relu", ["[/]"], ["y"], name="r")],
                   [_vi("[/]", [2])], [_vi("y", [2])])
    model.graph.name = "evil\x1b[2J[bold]name"
    path = _write(tmp_path, model)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and "[bold]" in out and "[/]" in out


def test_cli_exit_statuses(tmp_path, capsys):
    from graphdl.cli import main

    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"hello")
    assert main(["info", str(bad)]) == 3
    assert main(["optimize", str(bad), "-o", str(tmp_path / "o.onnx")]) == 3
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    good = _write(tmp_path, _relu_model())
    assert main(["optimize", str(good), "-o", str(tmp_path / "nodir" / "o.onnx")]) == 4
    assert main(["optimize", str(good), "-o", str(tmp_path / "o.onnx"),
                 "--import-budget", "bogus=1"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 5 and all(line.startswith("graphdl ") for line in lines)
    assert "Traceback" not in err


def test_absurd_declared_dims_are_refused_not_planned(tmp_path):
    """A graph input of 2^62 x 2^62 floats imports as a refusal naming the node, not an
    overflow deep in the memory planner."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                   [_vi("x", [2 ** 62, 2 ** 62])], [_vi("y", [2 ** 62, 2 ** 62])])
    path = _write(tmp_path, model)
    with pytest.raises(OnnxImportError, match=r"beyond any real model"):
        from_onnx(path)


@pytest.mark.parametrize("attrs", [{}, {"inverse": 1, "onesided": 1}])
def test_dft_bomb_is_refused_before_its_matrix_is_built(tmp_path, attrs):
    """A DFT whose constant dft_length is 2^31 would build a 64 GiB matrix at import."""
    n = numpy_helper.from_array(np.array(2 ** 31, np.int64), "n")
    node = helper.make_node("DFT", ["x", "n"], ["y"], name="dft_bomb", **attrs)
    model = _model([node], [_vi("x", [1, 4, 2])], [_vi("y", None)], [n])
    with pytest.raises(OnnxImportError, match=r"'dft_bomb' \(DFT\).*max_fold_bytes"):
        from_onnx(_write(tmp_path, model))
