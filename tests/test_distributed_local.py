"""Data-parallel pieces that need no second process: the sampler, the bucketing pass on
resnet18, communicator binding, the single-process communicator and the ONNX refusal."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import graphdl as gd
from graphdl.comm import LocalCommunicator
from graphdl.distributed import (Checkpoint, DataParallel, DistributedSampler,
                                 bind_communicator)
from graphdl.ops.registry import LoweringError
from graphdl.passes import optimize_graph, pipeline_names
from graphdl.passes.bucket import bucket_gradients, collective_stats
from tests import _mpi_worker as W


def test_sampler_pads_and_cuts_each_global_batch_into_equal_blocks():
    order = np.arange(10)[::-1]  # 10 samples, 3 ranks: padded to 12 from the order's start
    shards = [DistributedSampler(10, 3, r).indices(order, batch_size=2) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # every rank runs the same steps
    step0 = np.concatenate([s[:2] for s in shards])
    np.testing.assert_array_equal(step0, order[:6])  # step 0 = one process's first 6
    everything = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(everything, np.sort(np.r_[order, order[:2]]))
    dropped = [DistributedSampler(10, 3, r, drop_last=True).indices(order, 2) for r in range(3)]
    assert [len(s) for s in dropped] == [3, 3, 3]  # last global batch: one sample per rank
    with pytest.raises(ValueError, match="2 samples cannot be shared by 3 ranks"):
        DistributedSampler(2, 3, 0)


def test_bucketing_cuts_resnet18_collectives_to_a_few():
    model = gd.models.resnet18(num_classes=10, input_shape=(3, 32, 32))
    dp = DataParallel("local")
    graph = dp.train_step_graph(model, "cross_entropy", gd.optim.SGD(0.1))
    stats: dict = {}
    bucketed = bucket_gradients(graph, stats=stats)  # default: 25 MiB buckets
    assert stats["collectives_before"] == len(model.trainable_variables) == 62
    assert stats["collectives_after"] <= 5
    assert collective_stats(bucketed)["collectives"] == stats["collectives_after"]
    n_bytes = 4 * model.num_params()
    assert stats["bytes_per_step"] == collective_stats(graph)["bytes"] == n_bytes


def test_the_data_parallel_pipeline_is_data_and_its_options_ride_the_pass_context():
    names = pipeline_names(pipeline="data_parallel")
    assert names.index("bucket_gradients") < names.index("schedule_for_memory") \
        < names.index("overlap_collectives")
    graph = DataParallel("local").train_step_graph(W.mlp(), "cross_entropy", gd.optim.SGD(0.1))
    n = collective_stats(graph)["collectives"]
    assert n > 1  # one all-reduce per gradient

    def run(**options):
        out, report = optimize_graph(graph, passes="data_parallel", memory=False, **options)
        rules = [r.rules for r in report.rows if r.name == "bucket_gradients"][0]
        ops = collections.Counter(node.op for node in out.nodes)
        return rules["collectives_before"], rules["collectives_after"], ops

    assert run(bucket_bytes=None)[:2] == (n, n)  # off: counted, nothing packed
    before, after, ops = run(bucket_bytes=2 ** 20)
    assert (before, after) == (n, 1) and ops["AllReduce"] == 1 and not ops["AllReduceStart"]
    _, _, ops = run(bucket_bytes=2 ** 20, overlap=True)
    assert ops["AllReduceStart"] == ops["AllReduceDone"] == 1 and not ops["AllReduce"]


def test_a_collective_without_a_communicator_names_the_fix():
    x = gd.input("x", (3,), "float64")
    y = gd.ops.collective.all_reduce(x, "mean")
    f = gd.function([x], y, optimize=False)
    with pytest.raises(Exception, match="AllReduce has no communicator.*compile time"):
        f(np.ones(3))
    g = bind_communicator(gd.Graph([x], [y]), LocalCommunicator())
    np.testing.assert_array_equal(gd.Function(g)(np.arange(3.0))[0], np.arange(3.0))


def test_data_parallel_in_one_process_trains_like_plain_fit():
    want = W.fit(W.mlp(), "adam", W.B)
    got = W.fit(W.mlp(), "adam", W.B, DataParallel("local", bucket_bytes=700))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_the_data_parallel_step_refuses_single_process_onnx_export():
    from graphdl.backends.onnx_export import to_onnx

    model = W.mlp()
    graph = DataParallel("local").train_step_graph(model, "cross_entropy", "sgd")
    with pytest.raises(LoweringError, match="AllReduce is a collective across MPI ranks"):
        to_onnx(graph)


def test_checkpoints_are_written_by_rank_zero(tmp_path):
    cb = Checkpoint(tmp_path / "ckpt_{epoch}.npz")
    model = W.mlp()
    model.compile("sgd", "cross_entropy", distributed="local")
    X, y = W.data()
    model.fit(X[:16], y[:16], epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    assert [p.rsplit("/", 1)[-1] for p in cb.saved] == ["ckpt_1.npz", "ckpt_2.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.npz", "ckpt_2.npz"]


def test_the_split_step_trains_like_the_whole_step_and_refuses_synchronized_batchnorm():
    from graphdl.ir import GraphError
    from graphdl.split_step import split_train_step

    want = W.fit(W.mlp(), "sgd", W.B)
    got = W.fit(W.mlp(), "sgd", W.B, DataParallel("local", host_reduce=True))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    dp = DataParallel("local", sync_batchnorm=True)
    graph = dp.train_step_graph(W.bn_mlp(), "cross_entropy", "sgd")
    with pytest.raises(GraphError, match="all-reduces inside its forward pass"):
        split_train_step(graph)


def test_overlap_starts_each_bucket_when_ready_and_waits_before_the_optimizer():
    model = W.mlp()  # 4 gradients into 2 buckets of <= 700 bytes
    dp = DataParallel("local", bucket_bytes=700)
    step = dp.compile_train_step(model, "cross_entropy", gd.optim.SGD(0.1))
    nodes = step.graph.nodes
    at = {id(n): i for i, n in enumerate(nodes)}
    starts = [n for n in nodes if n.op == "AllReduceStart"]
    dones = [n for n in nodes if n.op == "AllReduceDone"]
    assert len(starts) == len(dones) == 2 and "AllReduce" not in [n.op for n in nodes]
    for s in starts:  # right after its packing, which is right after its last gradient
        pack = s.inputs[0].node
        assert pack.op == "Concat" and at[id(pack)] == at[id(s)] - 1
        last_grad = max(at[id(v.node.inputs[0].node)] for v in pack.inputs)
        between = [n.op for n in nodes[last_grad + 1:at[id(pack)]]]
        assert set(between) <= {"Reshape", "Const"}, between
    for d in dones:  # right before the first node that reads the reduced bucket
        first_reader = min(i for i, n in enumerate(nodes)
                           if any(v.node is d for v in n.inputs))
        assert at[id(d)] == first_reader - 1
    # the first bucket reduces while the backward pass goes on: its Done (and the updates
    # reading it) come after the second bucket starts
    first, second = sorted(starts, key=lambda n: at[id(n)])
    done_first = next(d for d in dones if d.inputs[0].node is first)
    assert at[id(first)] < at[id(second)] < at[id(done_first)]
    assert collective_stats(step.graph)["collectives"] == 2  # a start/done pair counts once
    plain = DataParallel("local", bucket_bytes=700, overlap=False)
    want = W.fit(W.mlp(), "adam", W.B, plain)
    got = W.fit(W.mlp(), "adam", W.B, DataParallel("local", bucket_bytes=700))
    np.testing.assert_array_equal(got, want)
