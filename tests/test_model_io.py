"""graphdl.model_io: all-or-nothing Model.load of untrusted .npz files, crash-safe saves."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import graphdl as gd
from graphdl import layers as L
from graphdl.atomic import TEMP_MARK, remove_stale_temps, temp_path_for
from graphdl.model_io import ModelFileError, WeightsMismatchError


def _mlp(seed=0):
    with L.name_scope():
        x = gd.input("x", (None, 6))
        h = L.Dense(4, activation="relu", name="fc1", seed=seed)(x)
        out = L.Dense(3, name="fc2", seed=seed + 1)(h)
    return gd.Model(x, out, name="mlp")


def _arrays(m):
    return {v.name: v.value.copy() for v in m.variables}


def _assert_unchanged(m, before):
    for v in m.variables:
        np.testing.assert_array_equal(v.value, before[v.name])


def test_half_load_file_changes_nothing(tmp_path):
    """Shapes all match but the last array holds strings: refused before any assignment."""
    m = _mlp()
    arrays = {k: np.ones_like(v) for k, v in _arrays(_mlp(seed=5)).items()}
    arrays["fc2.bias"] = np.array(["a", "b", "c"])
    path = tmp_path / "half.npz"
    np.savez(path, **arrays)
    before = _arrays(m)
    with pytest.raises(ModelFileError, match=r"half\.npz.*fc2\.bias.*real numbers"):
        m.load(path)
    _assert_unchanged(m, before)


@pytest.mark.parametrize("bad, pattern", [
    (np.nan, "NaN or Inf"), (np.inf, "NaN or Inf")])
def test_non_finite_weights_are_refused_unless_asked(tmp_path, bad, pattern):
    m = _mlp()
    arrays = _arrays(_mlp(seed=3))
    arrays["fc2.weight"][1, 2] = bad
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    before = _arrays(m)
    with pytest.raises(ModelFileError, match=pattern + r".*index \(1, 2\).*allow_nonfinite"):
        m.load(path)
    _assert_unchanged(m, before)
    m.load(path, allow_nonfinite=True)
    assert not np.isfinite(m.variables[2].value).all()


def test_float64_overflowing_float32_is_refused(tmp_path):
    m = _mlp()
    arrays = {k: v.astype(np.float64) for k, v in _arrays(m).items()}
    arrays["fc1.bias"][0] = 1e300
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(ModelFileError, match="overflows float32"):
        m.load(tmp_path / "w.npz")


def test_complex_weights_are_refused_not_truncated(tmp_path):
    m = _mlp()
    arrays = _arrays(m)
    arrays["fc1.weight"] = arrays["fc1.weight"] + 1j
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(ModelFileError, match="complex.*real numbers"):
        m.load(tmp_path / "w.npz")


def test_npy_header_bomb_is_refused_before_reading(tmp_path):
    """A member whose .npy header declares 64 MiB (zeros compress to almost nothing) is
    refused from its header: shapes are compared before any data is inflated."""
    m = _mlp()
    arrays = _arrays(m)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            if k != "fc1.weight":
                with zf.open(k + ".npy", "w") as f:
                    np.lib.format.write_array(f, v)
        with zf.open("fc1.weight.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.zeros(2 ** 24, np.float32))
    assert path.stat().st_size < 2 ** 20
    tracemalloc.start()
    try:
        with pytest.raises(WeightsMismatchError, match=r"fc1\.weight: model shape \(4, 6\), "
                                                       r"file shape \(16777216,\)"):
            m.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2 ** 20


def test_zip_directory_declaring_a_gigabyte_is_refused_before_reading(tmp_path):
    """A 70 KiB file whose zip directory declares 1 GiB for a member of the right shape."""
    m = _mlp()
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in _arrays(m).items():
            with zf.open(k + ".npy", "w") as f:
                np.lib.format.write_array(f, v)
        zf.comment = bytes(2 ** 16 - 1)
        zf.filelist[0].file_size = 2 ** 30  # the central directory now lies
    before = _arrays(m)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"lie\.npz.*fc1\.weight.*declares "
                                                 r"1,073,741,824 bytes"):
            m.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2 ** 20
    _assert_unchanged(m, before)


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", None])
def test_unreadable_files_name_the_path_without_pickle_hints(tmp_path, content):
    m = _mlp()
    path = tmp_path / "w.npz"
    m.save(path)
    if content is None:  # truncated
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError) as err:
        m.load(path)
    text = str(err.value)
    assert str(path) in text and "pickle" not in text and "\n" not in text


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        _mlp().load(tmp_path / "nope.npz")
    with pytest.raises(ModelFileError, match="folder"):
        _mlp().load(tmp_path)


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "w.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".w.npz.{TEMP_MARK}.{dead}.0badf00d.tmp"
    stale.write_bytes(b"x" * 100)
    alive = tmp_path / f".w.npz.{TEMP_MARK}.{os.getppid()}.0badf00d.tmp"
    alive.write_bytes(b"y")
    other = tmp_path / f".other.npz.{TEMP_MARK}.{dead}.0badf00d.tmp"
    other.write_bytes(b"z")
    _mlp().save(target)
    assert not stale.exists()
    assert alive.exists() and other.exists()  # a live writer's, another target's
    assert remove_stale_temps(tmp_path / "other.npz") == [other.name]
    tmp = temp_path_for(target)
    assert TEMP_MARK in tmp and str(os.getpid()) in tmp


_KILL_SAVE = """
import os, sys
import numpy as np
import graphdl as gd
from graphdl import layers as L
step = sys.argv[1]
with L.name_scope():
    x = gd.input("x", (None, 6))
    m = gd.Model(x, L.Dense(3, name="fc", seed=int(sys.argv[2]))(x))
print(float(m.variables[0].value.sum()), flush=True)
real_replace = os.replace
if step == "write":
    def savez(f, **arrays):
        f.write(b"PK partial")
        os._exit(9)
    np.savez = savez
elif step == "before_rename":
    os.replace = lambda *a: os._exit(9)
elif step == "after_rename":
    def replace(*a):
        real_replace(*a)
        os._exit(9)
    os.replace = replace
m.save(sys.argv[3])
"""


@pytest.mark.parametrize("step", ["write", "before_rename", "after_rename"])
def test_killed_save_leaves_old_or_new_weights(tmp_path, step):
    """A writer killed at each step leaves the old file or the new one, never a mix; the
    next save to the same target removes the dead writer's temp file."""
    target = tmp_path / "w.npz"
    runs = [subprocess.run([sys.executable, "-c", _KILL_SAVE, s, str(seed), str(target)],
                           capture_output=True, text=True)
            for s, seed in (("none", 1), (step, 2))]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[1].returncode == 9, runs[1].stderr
    old, new = (float(r.stdout.split()[0]) for r in runs)
    with np.load(target) as f:
        got = float(f["fc.weight"].sum())
    assert got == (new if step == "after_rename" else old)
    leftovers = [n for n in os.listdir(tmp_path) if TEMP_MARK in n]
    assert len(leftovers) == (0 if step == "after_rename" else 1)
    _mlp().save(tmp_path / "other.npz")  # a save to another target leaves them alone
    assert len([n for n in os.listdir(tmp_path) if TEMP_MARK in n]) == len(leftovers)
    again = subprocess.run([sys.executable, "-c", _KILL_SAVE, "none", "3", str(target)])
    assert again.returncode == 0
    assert [n for n in os.listdir(tmp_path) if TEMP_MARK in n] == []
