"""ONNX writes have one commit point: writers killed at every step of a save leave the old
model with its old data or the new model with its new data, never a mix; the next save
removes what the dead writer left."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from graphdl.atomic import TEMP_MARK
from graphdl.backends import onnx_save
from graphdl.backends.onnx_export import ExportError
from graphdl.backends.onnx_file import read_model

STEPS = ("data_open", "data_written", "data_renamed", "model_written", "committed",
         "old_data_removed")

_WRITER = """
import os, sys
import numpy as np
import graphdl as gd
from graphdl.backends import onnx_save
target, seed, kill_at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = gd.input("x", (None, 6))
w = gd.param("w", np.full((6, 300), float(seed), np.float32))
graph = gd.Graph([x], [gd.matmul(x, w)])
def reached(step):
    if step == kill_at:
        os._exit(9)
onnx_save._reached = reached
gd.export_onnx(graph, target, external_data=True, optimize=False)
"""


def _save(target, seed, kill_at="none"):
    return subprocess.run([sys.executable, "-c", _WRITER, str(target), str(seed), kill_at],
                          capture_output=True, text=True)


def _weight_value(target):
    """The single value every weight entry holds, read under graphdl's policy and by ORT."""
    model = read_model(target)
    from onnx import numpy_helper

    (w,) = [numpy_helper.to_array(t) for t in model.graph.initializer]
    assert np.unique(w).size == 1, "a torn weight file"
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 6), np.float32)})[0]
    np.testing.assert_allclose(out, np.full((1, 300), 6 * w.flat[0]), rtol=1e-6)
    return float(w.flat[0])


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_every_step_leaves_a_consistent_pair(tmp_path, step):
    target = tmp_path / "m.onnx"
    first = _save(target, 1)
    assert first.returncode == 0, first.stderr
    killed = _save(target, 2, step)
    assert killed.returncode == 9, killed.stderr
    committed = STEPS.index(step) >= STEPS.index("committed")
    assert _weight_value(target) == (2.0 if committed else 1.0)
    again = _save(target, 3)
    assert again.returncode == 0, again.stderr
    assert _weight_value(target) == 3.0
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and names[0] == "m.onnx", names  # the model and its one data file
    assert not any(TEMP_MARK in n for n in names)


def test_failed_rename_keeps_the_old_pair_and_cleans_up(tmp_path, monkeypatch):
    import graphdl as gd

    target = tmp_path / "m.onnx"
    assert _save(target, 1).returncode == 0
    before = sorted(os.listdir(tmp_path))
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(dst) == str(target):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    x = gd.input("x", (None, 6))
    graph = gd.Graph([x], [gd.matmul(x, gd.param("w", np.zeros((6, 300), np.float32)))])
    with pytest.raises(ExportError, match="No space left"):
        gd.export_onnx(graph, target, external_data=True, optimize=False)
    assert sorted(os.listdir(tmp_path)) == before
    assert _weight_value(target) == 1.0


def test_data_of_a_live_writer_is_left_alone(tmp_path):
    target = tmp_path / "m.onnx"
    assert _save(target, 1).returncode == 0
    in_progress = tmp_path / f"m.onnx.{os.getppid()}-0123abcd.data"
    in_progress.write_bytes(b"being written")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f"m.onnx.{dead}-0123abcd.data"
    orphan.write_bytes(b"left by a killed writer")
    other = tmp_path / f"other.onnx.{dead}-0123abcd.data"
    other.write_bytes(b"another model's")
    assert _save(target, 2).returncode == 0
    assert in_progress.exists() and other.exists() and not orphan.exists()


def test_save_model_steps_are_the_documented_ones(monkeypatch, tmp_path):
    import graphdl as gd

    seen = []
    monkeypatch.setattr(onnx_save, "_reached", seen.append)
    x = gd.input("x", (None, 6))
    graph = gd.Graph([x], [gd.matmul(x, gd.param("w", np.ones((6, 300), np.float32)))])
    gd.export_onnx(graph, tmp_path / "m.onnx", external_data=True, optimize=False)
    assert tuple(seen) == STEPS
