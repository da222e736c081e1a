"""Benchmark: data-parallel train steps on MPI, measured on 1 and 2 ranks, and an alpha-beta
model of ring all-reduce extrapolated to ResNet-50 on 1-1,024 ranks.

Measured (NumPy executor, float32, one BLAS thread per rank on 1 rank as on 2, so 2 ranks use
the 2 cores and the weak-scaling number is per core):
- the step time of the cnn and resnet18 train steps (3x32x32 inputs; batch per rank fixed:
  weak scaling) on 1 and 2 ranks, for the default step (``overlap``: each bucket's all-reduce
  started when its last gradient exists, waited for before the optimizer), the same graph
  with blocking all-reduces (``serial``), and its compute alone (``compute``: a
  single-process communicator, run on every rank at once, so under the same contention);
  the exposed all-reduce time per step; the efficiency ``t(1 rank) / t(2 ranks)``, each
  step's time being its slowest rank's;
- collectives and bytes all-reduced per step with and without gradient bucketing;
- the step's all-reduce (in place, start + done) against message size on 2 ranks, in the same
  job, which calibrates the model's alpha (latency) and beta (seconds per byte).

Modelled (benchmarks/mpi_cost_model.py): the 2-rank step predicted as the 2-rank compute plus
the modelled all-reduce of the step's buckets, against the measurement; then ResNet-50 (25.6M
parameters, 102 MB of float32 gradients in 25 MiB buckets) with a GPU-class compute time per
step, on 25/100/400 Gb/s links, with and without overlapping communication with the backward
pass, next to Horovod's published ~90 % scaling efficiency at 512 GPUs. Writes JSON
(``summary`` holds the efficiency and the model error per model) and a PNG.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_mpi.py``
(spawns ``mpiexec -n 1`` and ``mpiexec -n 2`` itself, alternating, twice; about 2 minutes
on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mpi_cost_model import AlphaBeta, bucket_sizes, calibrate, efficiency  # noqa: E402

from graphdl.comm import Communicator  # noqa: E402  (mpi4py itself is imported lazily)

MODELS = {"cnn": 32, "resnet18": 16}  # model -> batch per rank
RESNET50_PARAMS = 25_557_032  # torchvision
# Horovod (Sergeev & Del Balso 2018, fig. 6): ResNet-50 at 512 GPUs, ~90 % efficiency
HOROVOD_EFFICIENCY_512 = 0.90
# GPU-class compute per step for ResNet-50 at batch 64 per GPU (P100, ~230 img/s fp32, the
# hardware of Horovod's paper): forward + backward, no communication
RESNET50_GPU_STEP_S = 64 / 230.0
NOTES = (
    "Measured on a shared 2-core machine: one BLAS thread per rank on 1 and on 2 ranks; a "
    "step's time is its slowest rank's. The 2-rank step is predicted as the compute measured "
    "on both ranks at once (same graph, no communication, same contention) plus the ring "
    "all-reduce T = 2(p-1)alpha + 2(p-1)/p n beta of every bucket, alpha and beta fitted to "
    "the same job's sweep of the step's own in-place all-reduce (median per size), around "
    "the step's bucket sizes (within 4x: one line through 4 KiB-64 MiB underpredicts the "
    "large messages, which run at memory rather than cache speed). Overlap "
    "on this machine: both cores run ranks, so the reduction's copying and adding is done by "
    "the ranks themselves (MPICH has no progress thread; the executor polls it between "
    "kernels); overlap can hide waiting for the other rank, not that work, and the model "
    "counts the work in full. The ResNet-50 projection uses the link's bandwidth, a network "
    "latency alpha = 5 us (the shared-memory alpha fitted here says nothing about a "
    "network), and a P100-class compute time (batch 64, the hardware of Horovod's paper), "
    "where the reduction runs on the NIC/other engines and overlap does hide it. Without "
    "overlap, 25 MiB buckets reach Horovod's ~90 % at 512 ranks only at 400 Gb/s; with each "
    "bucket's all-reduce overlapped with the rest of the backward pass (what "
    "graphdl.passes.bucket.overlap_collectives schedules) 25 Gb/s suffices: only the last "
    "bucket stays exposed. 4 MiB buckets expose less at moderate scale but pay 25 latency "
    "terms per step, which loses past ~256 ranks. Without bucketing, 161 all-reduces per "
    "step pay the latency term 161 times and efficiency collapses past ~64 ranks at any "
    "bandwidth.")
NETWORK_ALPHA_S = 5e-6  # one message step on a datacentre network (RDMA-class latency)


# ---- the worker: runs on every rank under mpiexec ----------------------------------------

# timed in turn, every step, on every rank
VARIANTS = ("overlap", "serial", "compute", "overlap_no_poll")


def worker(out: str, steps: int, warmup: int) -> None:
    """Time the train steps (and, on 2 ranks, the all-reduce sizes); rank 0 writes JSON.

    Per model, four functions of the very same optimized train-step graph, timed in turn:
    ``overlap`` (the default: all-reduces started when their bucket is ready, waited for
    before the optimizer, MPI polled between kernels), ``serial`` (the same graph without the
    start/done split: blocking all-reduces), ``compute`` (the overlap graph with a
    single-process communicator bound: every kernel and the bucket packing, no
    communication), run on all ranks at once, so the compute time is measured under the same
    contention as the real step, and ``overlap_no_poll`` (the overlap graph on a communicator
    that never polls: does MPICH progress without the executor's polls?). A step's time is
    the slowest rank's (the job moves at its pace).
    """
    from threadpoolctl import threadpool_limits

    import graphdl as gd
    from graphdl.comm import LocalCommunicator
    from graphdl.distributed import DataParallel, bind_communicator
    from graphdl.compiled_function import Function
    from graphdl.passes.bucket import collective_stats

    threadpool_limits(1)  # one BLAS thread per rank, on 1 rank as on 2: weak scaling per core
    result: dict = {"models": {}}
    dp = None
    for name, batch in MODELS.items():
        model = getattr(gd.models, name)(num_classes=10, input_shape=(3, 32, 32), seed=0)
        dp = DataParallel("mpi", timeout=600.0)
        opt = gd.optim.SGD(0.01, momentum=0.9)
        t0 = time.perf_counter()
        raw = dp.train_step_graph(model, "cross_entropy", opt)
        overlapped, _ = dp.optimize(raw, overlap=True)
        serial, _ = dp.optimize(raw, overlap=False)
        compile_s = time.perf_counter() - t0
        quiet = NoPollCommunicator(dp.comm.comm, timeout=600.0)
        comms = {"overlap": dp.comm, "serial": dp.comm, "compute": LocalCommunicator(),
                 "overlap_no_poll": quiet}
        fns = {k: Function(bind_communicator(serial if k == "serial" else overlapped, c))
               for k, c in comms.items()}
        grads = [v.value.nbytes for v in model.trainable_variables]
        r = np.random.default_rng(dp.rank)
        x = r.normal(size=(batch, 3, 32, 32)).astype(np.float32)
        y = r.integers(0, 10, batch)
        times = {k: [] for k in VARIANTS}
        comm = {k: [] for k in VARIANTS}
        for i in range(warmup + steps):
            for k in VARIANTS:
                dp.comm.barrier()
                before = comms[k].stats.seconds
                start = time.perf_counter()
                fns[k](x, y)
                if i >= warmup:
                    times[k].append(time.perf_counter() - start)
                    comm[k].append(comms[k].stats.seconds - before)
        arena = fns["compute"].executor.arena_report()
        row = {"batch_per_rank": batch, "compile_s": compile_s,
               "collectives_unbucketed": collective_stats(raw)["collectives"],
               "collectives_bucketed": collective_stats(serial)["collectives"],
               "bytes_per_step": collective_stats(serial)["bytes"],
               "gradient_tensor_bytes": grads,
               # packing the buckets (Concat writes every gradient once); unpacking them is
               # free (Split and Reshape are views): what kernels still copy into the arena
               "pack_bytes": collective_stats(serial)["bytes"],
               "bytes_copied_into_arena": arena.get("bytes_copied_into_arena", 0)}
        for k in VARIANTS:  # per step, the slowest rank
            row[f"{k}_step_s"] = _slowest(dp.comm, times[k])
            row[f"{k}_allreduce_s"] = _slowest(dp.comm, comm[k])
        result["models"][name] = row
    if dp.size == 2:
        result["allreduce_sizes"] = allreduce_sweep(dp.comm)
    result["ranks"] = dp.size
    if dp.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


class NoPollCommunicator(Communicator):
    """A communicator that ignores the executor's polls: a started all-reduce progresses
    only inside MPI calls of its own (its done)."""

    def poll(self) -> None:
        """Do nothing."""


def _slowest(comm, samples: list[float]) -> list[float]:
    """Per sample, the largest over the ranks."""
    return [float(v) for v in comm.allreduce_host(np.asarray(samples, np.float64), "max")]


def allreduce_sweep(comm, reps: int = 7) -> dict:
    """Seconds of the all-reduce the step runs (in place, started then waited for) on float32
    buffers from 4 KiB to 64 MiB (denser above 1 MiB, where the buckets are), the slowest rank's, median of ``reps``."""
    sizes, medians, fastest = [], [], []
    for log2 in list(range(12, 20, 2)) + list(range(20, 27)):  # every power of 2 from 1 MiB
        buf = np.ones(2 ** log2 // 4, np.float32)
        samples = []
        for _ in range(reps):
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce_done(comm.allreduce_start(buf, buf), "sum")
            samples.append(time.perf_counter() - start)
        samples = _slowest(comm, samples)
        sizes.append(buf.nbytes)
        medians.append(statistics.median(samples))
        fastest.append(min(samples))
    return {"bytes": sizes, "seconds": medians, "fastest_seconds": fastest}


# ---- the driver ----------------------------------------------------------------------------

def run_ranks(ranks: int, steps: int, warmup: int) -> dict:
    """One mpiexec job of ``ranks`` workers; returns rank 0's results."""
    from graphdl.launch import mpiexec_command

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = mpiexec_command(ranks, [os.path.abspath(__file__), "--worker", out,
                                      "--steps", str(steps), "--warmup", str(warmup)])
        subprocess.run(cmd, check=True, timeout=600)
        with open(out) as f:
            return json.load(f)


def merge_rounds(rounds: list[dict]) -> dict:
    """Several jobs' results as one: step samples pooled, medians over the pool."""
    merged = json.loads(json.dumps(rounds[0]))
    for name, row in merged["models"].items():
        for k in VARIANTS:
            for what in ("step_s", "allreduce_s"):
                pool = [t for r in rounds for t in r["models"][name][f"{k}_{what}"]]
                row[f"{k}_{what}"] = pool
                row[f"{k}_{what.replace('_s', '_median_s')}"] = statistics.median(pool)
    if "allreduce_sizes" in merged:
        for what in ("seconds", "fastest_seconds"):
            per_size = zip(*[r["allreduce_sizes"][what] for r in rounds])
            merged["allreduce_sizes"][what] = [statistics.median(s) for s in per_size]
    return merged


def model_section(one: dict, two: dict, sweep: dict) -> dict:
    """Measured scaling and the model's prediction of the 2-rank step, per model.

    Prediction: the compute time measured on 2 ranks at once (the ``compute`` variant: every
    kernel and the bucket packing, under the same contention) plus the modelled all-reduce
    of each bucket. On this machine every core runs a rank, so no core is free to reduce
    while the other computes: the reduction's copying and adding is done by the ranks
    themselves, between kernels (overlap) or after them (serial), and the model counts it in
    full in both cases; what overlap can hide here is waiting, which the model omits.
    """
    out = {}
    for name in MODELS:
        a, b = one["models"][name], two["models"][name]
        grads = b["gradient_tensor_bytes"]
        buckets = bucket_sizes(sum(grads), 25 * 2 ** 20, grads[::-1])
        # alpha and beta fitted to the sweep around this step's bucket sizes
        link = calibrate(sweep["bytes"], sweep["seconds"], ranks=2, near=buckets)
        modelled_comm = link.buckets_seconds(buckets, 2)
        compute = b["compute_step_median_s"]
        predicted = compute + modelled_comm
        row = {
            "batch_per_rank": a["batch_per_rank"],
            "step_1_rank_s": a["overlap_step_median_s"],
            "step_2_ranks_s": b["overlap_step_median_s"],
            "step_2_ranks_serial_s": b["serial_step_median_s"],
            "compute_1_rank_s": a["compute_step_median_s"],
            "compute_2_ranks_s": compute,
            "allreduce_2_ranks_s": b["overlap_allreduce_median_s"],
            "allreduce_2_ranks_serial_s": b["serial_allreduce_median_s"],
            # the executor's MPI polls between kernels: the step without them
            "step_2_ranks_no_poll_s": b["overlap_no_poll_step_median_s"],
            "allreduce_2_ranks_no_poll_s": b["overlap_no_poll_allreduce_median_s"],
            "weak_scaling_efficiency": a["overlap_step_median_s"] / b["overlap_step_median_s"],
            "weak_scaling_efficiency_serial": (a["serial_step_median_s"]
                                               / b["serial_step_median_s"]),
            # how much of the 1 -> 2 rank loss is compute slowing down (shared memory
            # bandwidth, cache) rather than communication
            "compute_slowdown_2_ranks": compute / a["compute_step_median_s"],
            "collectives_per_step": {"unbucketed": b["collectives_unbucketed"],
                                     "bucketed": b["collectives_bucketed"]},
            "bytes_per_step": b["bytes_per_step"],
            "bytes_per_step_unbucketed": sum(grads),
            "pack_bytes_per_step": b["pack_bytes"],
            "bytes_copied_into_arena_per_step": b["bytes_copied_into_arena"],
            "buckets_bytes": buckets,
            "calibration_near_buckets": {"alpha_s": link.alpha, "beta_s_per_byte": link.beta},
            "model_allreduce_2_ranks_s": modelled_comm,
            "model_step_2_ranks_s": predicted,
            "model_error": predicted / b["overlap_step_median_s"] - 1.0,
            "model_error_serial": predicted / b["serial_step_median_s"] - 1.0,
        }
        out[name] = row
    return out


def resnet50_projection(link_alpha: float) -> dict:
    """ResNet-50 step time and efficiency at 1-1,024 ranks on 25/100/400 Gb/s."""
    grad_bytes = 4 * RESNET50_PARAMS
    buckets = bucket_sizes(grad_bytes, 25 * 2 ** 20)
    ranks = [2 ** k for k in range(11)]
    out = {"gradient_bytes": grad_bytes, "buckets": len(buckets),
           "compute_s": RESNET50_GPU_STEP_S, "alpha_s": link_alpha, "ranks": ranks,
           "networks": {}}
    for gbit in (25, 100, 400):
        link = AlphaBeta.link(gbit, link_alpha)
        rows = {}
        for overlap, label in ((False, "no_overlap"), (True, "overlap")):
            rows[label] = [efficiency(RESNET50_GPU_STEP_S, buckets, p, link, overlap)
                           for p in ranks]
        small = bucket_sizes(grad_bytes, 4 * 2 ** 20)
        rows["overlap_4MiB_buckets"] = [efficiency(RESNET50_GPU_STEP_S, small, p, link, True)
                                        for p in ranks]
        unbucketed = bucket_sizes(grad_bytes, None, [grad_bytes / 161] * 161)
        rows["no_overlap_unbucketed"] = [efficiency(RESNET50_GPU_STEP_S, unbucketed, p, link)
                                         for p in ranks]
        comm_512 = link.buckets_seconds(buckets, 512)
        rows["allreduce_512_s"] = comm_512
        # Horovod's 90 % at 512 allows exposed comm <= compute / 9: the share of the
        # all-reduce time that overlap has to hide
        rows["share_to_hide_for_90pct_at_512"] = max(
            0.0, (comm_512 - RESNET50_GPU_STEP_S / 9.0) / comm_512)
        out["networks"][f"{gbit}Gbps"] = rows
    return out


def plot(results: dict, path: str) -> str | None:
    """Efficiency against ranks per network, with Horovod's point (matplotlib OO API)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from graphdl.atomic import atomic_path

    proj = results["resnet50_projection"]
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (net, rows), colour in zip(proj["networks"].items(), ("C0", "C1", "C2")):
        ax.plot(proj["ranks"], rows["no_overlap"], "-", color=colour,
                label=f"{net}, 25 MiB buckets, no overlap")
        ax.plot(proj["ranks"], rows["overlap"], "--", color=colour,
                label=f"{net}, buckets + overlap with backward")
        ax.plot(proj["ranks"], rows["no_overlap_unbucketed"], ":", color=colour,
                label=f"{net}, 161 unbucketed all-reduces, no overlap")
    ax.plot([512], [HOROVOD_EFFICIENCY_512], "k*", markersize=12,
            label="Horovod, published (~90 % at 512 GPUs)")
    ax.set(xscale="log", xlabel="ranks (GPUs)", ylabel="weak-scaling efficiency",
           ylim=(0, 1.05), title="ResNet-50 data-parallel: ring all-reduce alpha-beta model")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def main(argv=None) -> int:
    """Run the benchmark (or, with --worker, one rank of it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="1-rank and 2-rank jobs alternate this many times")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "mpi.json"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps, args.warmup)
        return 0
    from graphdl import atomic

    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.rounds):  # interleaved: drift on the shared machine hits both alike
        for ranks in (1, 2):
            runs[ranks].append(run_ranks(ranks, args.steps, args.warmup))
    one, two = merge_rounds(runs[1]), merge_rounds(runs[2])
    sweep = two["allreduce_sizes"]
    link = calibrate(sweep["bytes"], sweep["seconds"], ranks=2)
    measured = model_section(one, two, sweep)
    results = {
        "machine": {"cpus": os.cpu_count(), "blas_threads_per_rank": 1,
                    "load_average_1min": [load_before, os.getloadavg()[0]]},
        "allreduce_2_ranks": sweep,
        # one line through every size (for reference; each model's prediction uses the fit
        # around its own bucket sizes, in "measured")
        "calibration": {"alpha_s": link.alpha, "beta_s_per_byte": link.beta,
                        "bandwidth_GBps": 1e-9 / link.beta if link.beta else None},
        "measured": measured,
        "summary": {name: {"weak_scaling_efficiency": row["weak_scaling_efficiency"],
                           "model_error": row["model_error"],
                           "efficiency_target_0.85_met": row["weak_scaling_efficiency"] >= 0.85,
                           "model_within_20pct": abs(row["model_error"]) <= 0.20}
                    for name, row in measured.items()},
        # a network's latency, not this machine's shared memory: see NOTES
        "resnet50_projection": resnet50_projection(NETWORK_ALPHA_S),
        "horovod_published_efficiency_512": HOROVOD_EFFICIENCY_512,
        "notes": NOTES,
        "raw": {"1_rank": one, "2_ranks": two},
        "bench_seconds": time.perf_counter() - start,
    }
    atomic.write_json(args.out, results)
    png = plot(results, os.path.splitext(args.out)[0] + "_scaling.png")
    for name, row in results["measured"].items():
        print(f"{name}: step 1 rank {row['step_1_rank_s'] * 1e3:.0f} ms, 2 ranks "
              f"{row['step_2_ranks_s'] * 1e3:.0f} ms (serial "
              f"{row['step_2_ranks_serial_s'] * 1e3:.0f} ms, compute "
              f"{row['compute_2_ranks_s'] * 1e3:.0f} ms, exposed all-reduce "
              f"{row['allreduce_2_ranks_s'] * 1e3:.1f} ms, without polls "
              f"{row['step_2_ranks_no_poll_s'] * 1e3:.0f} ms), efficiency "
              f"{row['weak_scaling_efficiency']:.3f} (serial "
              f"{row['weak_scaling_efficiency_serial']:.3f}); collectives "
              f"{row['collectives_per_step']['unbucketed']} -> "
              f"{row['collectives_per_step']['bucketed']}; model error "
              f"{row['model_error']:+.1%} (serial {row['model_error_serial']:+.1%})")
    print(f"alpha {link.alpha * 1e6:.1f} us, beta {link.beta * 1e9:.3f} ns/B; wrote {args.out}"
          + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
