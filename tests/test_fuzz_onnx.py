"""Fuzzing graphdl's ONNX entry points with a structured mutator (hypothesis, fixed seed).

Each example mutates one of a handful of seed models (dims, dtypes, attributes, nodes,
graph inputs/outputs, headers, tensor data, external-data references to planted attack
files, size and trip-count bombs) and feeds it to ``from_onnx``, ``describe`` (``graphdl
info``) and ``cli_optimize`` (``graphdl optimize``). Each must accept the file or refuse it
with a one-line ``OnnxImportError``/``ExportError``: never another exception, never a byte
of the planted secret in what it returns or writes. The subprocess version, with timeouts,
memory caps and an audit of every opened file, is ``benchmarks/fuzz_onnx.py``.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings, strategies as st

from graphdl.backends.onnx_export import ExportError
from graphdl.backends.onnx_import import OnnxImportError, from_onnx
from graphdl.backends.onnx_info import describe
from graphdl.optimization import cli_optimize
from tests.onnx_mutations import SEEDS, make_case

CLEAN = (OnnxImportError, ExportError)


def _check_entry_point(call) -> object:
    try:
        return call()
    except CLEAN as err:
        text = str(err)
        assert text and "\n" not in text.strip(), f"a refusal must be one line: {text!r}"
        assert "Traceback" not in text
        return None


def _no_secret(graph) -> None:
    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Const" else None
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            assert b"SECRET" not in value.tobytes()
        var = node.attrs.get("variable")
        if var is not None:
            assert b"SECRET" not in np.asarray(var.value).tobytes()


@settings(max_examples=90, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from(SEEDS), kind=st.sampled_from(["structure", "structure", "bytes"]),
       case_seed=st.integers(0, 2 ** 32 - 1))
def test_mutated_models_are_accepted_or_refused_cleanly(tmp_path_factory, seed, kind,
                                                         case_seed):
    folder = tmp_path_factory.mktemp("case")
    path = make_case(kind, seed, case_seed, folder / "m")
    graph = _check_entry_point(lambda: from_onnx(path))
    if graph is not None:
        _no_secret(graph)
    _check_entry_point(lambda: describe(path))
    out = path.parent / "out.onnx"
    result = _check_entry_point(lambda: cli_optimize(path, out))
    if result is not None:
        onnx.checker.check_model(str(out), full_check=False)
        assert b"SECRET" not in out.read_bytes()
    else:
        assert not out.exists()
    shutil.rmtree(folder, ignore_errors=True)


def test_seed_models_import_cleanly(tmp_path):
    """The seeds themselves are valid, so mutations start from accepted files."""
    for seed in SEEDS:
        folder = tmp_path / seed
        path = make_case("structure", seed, 0, folder)
        clean = folder / "clean.onnx"
        from tests.onnx_mutations import external_seed, seed_models

        model = external_seed(folder) if seed == "external" else seed_models()[seed]
        clean.write_bytes(model.SerializeToString())
        assert from_onnx(clean) is not None, seed
        assert path.exists()
