"""The ``graphdl`` command line: the demo end to end in a subprocess, and argument parsing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from graphdl import cli


def test_demo_runs_end_to_end(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "graphdl.cli", "demo", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "test accuracy" in text and "training took" in text
    assert "conv1" in text and "fc2" in text and "Total params" in text  # the summary
    assert sorted(p for p in os.listdir(out) if not p.endswith(".onnx")) == [
        "digits_cnn.npz", "results.json", "training_curve.png"]
    with open(out / "training_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0
    assert results["onnx"]["status"] == "ok"
    assert results["onnx"]["max_abs_diff"] <= 1e-5
    assert results["optimize"]["status"] == "ok"
    memory = results["optimize"]["memory"]
    assert memory["lower_bound"] <= memory["planned"] <= memory["no_reuse"]


def test_demo_trains_on_onnxruntime_and_names_the_provider(tmp_path):
    """``graphdl demo --backend onnxruntime`` trains on ORT (the full demo reaches the same
    >= 98 % bar; --quick runs 2 epochs) and prints the provider it used."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "graphdl.cli", "demo", "--quick", "--backend",
                           "onnxruntime", "--providers", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained on ONNX Runtime, provider CPUExecutionProvider" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "onnxruntime (CPUExecutionProvider)"
    assert results["test_accuracy"] > 0.5  # 2 epochs; the full demo's bar is checked by hand


def test_demo_without_sklearn_says_how_to_install(monkeypatch, capsys):
    import builtins

    from graphdl import demo

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(demo.DemoDataError, match=r"pip install -e '\.\[examples\]'"):
        demo.load_digits_split()
    assert cli.main(["demo", "--quick"]) == 2
    assert "pip install -e '.[examples]'" in capsys.readouterr().err


def test_subcommand_arguments_parse():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--epochs", "3", "--out", "o", "--seed", "7"])
    assert (args.command, args.epochs, args.out, args.seed, args.quick) == ("demo", 3, "o", 7,
                                                                            False)
    assert parser.parse_args(["demo"]).out == "graphdl_demo_out"
    args = parser.parse_args(["info", "model.onnx"])
    assert (args.command, args.file) == ("info", "model.onnx")
    args = parser.parse_args(["optimize", "in.onnx", "-o", "out.onnx", "--report", "r.json"])
    assert (args.input, args.output, args.report) == ("in.onnx", "out.onnx", "r.json")
    assert parser.parse_args(["optimize", "in.onnx", "--output", "o.onnx"]).report is None


@pytest.mark.parametrize("argv", [[], ["optimize", "in.onnx"], ["demo", "--epochs", "0"],
                                  ["demo", "--bogus"], ["frobnicate"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2
    assert "usage: graphdl" in capsys.readouterr().err


def test_bench_passes_its_options_through(monkeypatch):
    import importlib

    bench = importlib.import_module("graphdl.bench")
    seen = []
    monkeypatch.setattr(bench, "run", lambda args: seen.append(args) or 0, raising=False)
    assert cli.main(["bench", "--models", "cnn", "--quick"]) == 0
    assert seen == [["--models", "cnn", "--quick"]]


def test_info_and_optimize_dispatch(monkeypatch, tmp_path):
    import importlib

    info = importlib.import_module("graphdl.backends.onnx_info")
    calls = []
    monkeypatch.setattr(info, "print_info", lambda path, *a, **k: calls.append(("info", path)))
    monkeypatch.setattr(cli, "cli_optimize",
                        lambda i, o, r, **kw: calls.append(("opt", i, o, r)))
    monkeypatch.chdir(tmp_path)
    for name in ("m.onnx", "a.onnx"):
        (tmp_path / name).write_bytes(b"")
    assert cli.main(["info", "m.onnx"]) == 0
    assert cli.main(["optimize", "a.onnx", "-o", "b.onnx", "--report", "r.json"]) == 0
    assert calls == [("info", "m.onnx"), ("opt", "a.onnx", "b.onnx", "r.json")]


def test_missing_file_is_a_clear_error(capsys, tmp_path):
    pytest.importorskip("onnx")
    code = cli.main(["info", str(tmp_path / "nope.onnx")])
    assert code == 2
    assert "nope.onnx" in capsys.readouterr().err
