"""Data-parallel training under ``mpiexec -n 2``, against one process with the global batch.

Each test launches ``mpiexec -n 2 python -m tests._mpi_worker ...`` (about a second of MPI
start-up) and compares with the one-process reference computed here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from graphdl.comm import mpi_available
from graphdl.launch import find_mpiexec
from tests import _mpi_worker as W

pytestmark = pytest.mark.skipif(not mpi_available(), reason="mpi4py is not installed "
                                "(pip install 'graphdl[mpi]')")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mpiexec(args, timeout):
    cmd = [find_mpiexec(), "-n", "2", sys.executable, "-m", "tests._mpi_worker", *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    proc, _ = _mpiexec(["train", str(out)], timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return lambda name, rank=0: np.load(out / f"{name}_{rank}.npy")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_two_ranks_equal_one_process_with_the_global_batch(trained, opt):
    want = W.fit(W.mlp(), opt, 2 * W.B)
    for rank in (0, 1):
        got = trained(opt, rank)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(trained(opt, 0), trained(opt, 1))  # ranks in lockstep


def test_bucketing_changes_no_result_and_cuts_the_collectives(trained):
    np.testing.assert_array_equal(trained("adam_bucketed"), trained("adam"))
    before, after, calls, pending = trained("adam_bucketed_counts")
    assert pending == 0
    assert before == 4 and after == 2  # 4 gradients (576+96+288+24 bytes) into 2 buckets of <= 700
    # what ran: one broadcast of the variables, then per step the buckets and the metrics
    assert calls == 1 + W.STEPS * (after + 1)
    _, _, unbucketed_calls, _ = trained("adam_counts")
    assert unbucketed_calls == 1 + W.STEPS * (4 + 1)


def test_overlapped_all_reduces_change_no_result_and_all_complete(trained):
    # the default starts each bucket when its gradients exist and waits before the optimizer
    np.testing.assert_array_equal(trained("adam_bucketed"), trained("adam_serial"))
    for rank in (0, 1):
        counts = trained("adam_bucketed_counts", rank)
        assert counts[2] == trained("adam_serial_counts", rank)[2]  # as many collectives
        assert counts[3] == 0  # no request left in flight


def test_a_step_failing_between_start_and_done_leaves_no_request_in_flight(tmp_path):
    proc, _ = _mpiexec(["leak", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = (np.load(tmp_path / f"leak_{rank}.npy") for rank in (0, 1))
    assert r0[3] == r1[3] == 1  # Start, then the Exp that fails, then Done
    assert r1[0] == 1 and r0[0] == 0  # rank 1 failed (its NaN), rank 0 finished the step
    assert "NaN in output 0 of Exp" in proc.stdout
    assert r0[1] == r1[1] == 0 and r0[2] == r1[2] == 0  # nothing left in flight, after both
    np.testing.assert_array_equal(r0[4:], 1.5 + 2.0)  # mean(1, 2) + 2 exp(0): a clean step
    np.testing.assert_array_equal(r1[4:], 1.5 + 2.0)


def test_gradient_and_apply_graphs_with_a_host_all_reduce_give_the_same_training(trained):
    # the split ONNX Runtime needs, run here on the NumPy executor
    np.testing.assert_allclose(trained("adam_host"), trained("adam"), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(trained("adam_host", 0), trained("adam_host", 1))


@pytest.mark.skipif(not W.ort_training(), reason="this build has no ONNX Runtime training "
                    "(graphdl/backends/ort_train.py, issue 10)")
def test_onnx_runtime_sessions_with_a_host_all_reduce_train_like_one_process(trained):
    want = W.fit(W.mlp(), "adam", 2 * W.B)
    for rank in (0, 1):
        np.testing.assert_allclose(trained("adam_ort", rank), want, rtol=0, atol=1e-12)


def test_synchronized_batchnorm_equals_one_process_on_the_full_batch(trained):
    want = W.fit(W.bn_mlp(), "adam", 2 * W.B)  # weights include the running statistics
    np.testing.assert_allclose(trained("syncbn", 0), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trained("syncbn", 1), want, rtol=0, atol=1e-12)


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc, _ = _mpiexec(["nan", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = (np.load(tmp_path / f"nan_{rank}.npy") for rank in (0, 1))
    assert r0[0] == r1[0] == 6  # both stopped at batch 6 of the epoch
    assert r0[1] == r1[1] == 5  # after 5 committed steps
    np.testing.assert_array_equal(r0[2:], r1[2:])  # the weights from before step 6, kept
    assert np.isfinite(r0[2:]).all()


@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_a_failing_rank_ends_the_job_with_a_clear_message(tmp_path, how):
    proc, seconds = _mpiexec([how, str(tmp_path)], timeout=60)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "finished without the fault" not in text
    assert seconds < 40, f"the job took {seconds:.0f} s to end"
    if how == "raise":  # the raising rank names itself and the error, then aborts the job
        assert "rank 1/2: ValueError: rank 1 hit a bad batch on purpose" in text, text
    elif how == "kill":  # mpiexec sees the dead rank and ends the others
        assert "BAD TERMINATION" in text and "signal 9" in text, text
    else:  # rank 0's watchdog gives up on the collective after the 5 s timeout
        assert "rank 0/2: AllReduce" in text and "did not complete within 5 s" in text, text


def test_demo_on_two_ranks(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "graphdl.cli", "demo", "--ranks", "2",
                           "--quick", "--quiet", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "data-parallel on 2 MPI ranks" in text
    assert text.count("test accuracy") == 1  # rank 0 reports, once
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["ranks"] == 2 and results["test_accuracy"] >= 0.95  # 2 epochs (--quick)
