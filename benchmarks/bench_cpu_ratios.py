"""Work ratios that survive a busy machine: thread CPU time per training step, everything on
one thread, the contenders interleaved round by round in one process (medians of rounds).

- ``mlp_generic``: the generic-loss MLP step of ``bench_mlp_step.py`` on the NumPy executor
  against the same step hand-written in NumPy;
- ``cnn``: the cnn train step of ``bench_cnn_train.py`` (batch 64, 3x32x32) on the NumPy
  executor against torch eager, both on one thread.

Wall-time ratios swing by 2x and more while other processes take the cores (torch's spinning
pool suffers most); the CPU time a thread spends in a step moves far less. These ratios are
for comparing kernels and interpreter changes while the machine is shared; the targets are
the wall-time ratios of ``bench_mlp_step.py`` and ``bench_cnn_train.py`` on a quiet machine.

Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu_ratios.py``
(about a minute on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from graphdl.atomic import write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_cnn_train as cnn  # noqa: E402  (the sibling benchmarks' builders)
import bench_mlp_step as mlp  # noqa: E402


def cpu_interleaved(contenders: dict, rounds: int, inner: int) -> dict[str, float]:
    """Median over rounds of thread CPU ms per call; each round runs every contender once,
    starting from a different one."""
    for fn in contenders.values():
        for _ in range(2):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.thread_time()
            for _ in range(inner):
                contenders[name]()
            samples[name].append((time.thread_time() - start) / inner * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def mlp_generic(rounds: int) -> dict:
    """graphdl's generic MLP step against hand-written NumPy, thread CPU ms."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((mlp.BATCH, mlp.SIZES[0])).astype(np.float32)
    onehot = np.eye(mlp.SIZES[-1], dtype=np.float32)[rng.integers(0, mlp.SIZES[-1],
                                                                  mlp.BATCH)]
    weights = mlp.init_weights()
    gd_step, ref = mlp.graphdl_step(weights, fused=False), mlp.numpy_step(weights)
    ms = cpu_interleaved({"graphdl_numpy": lambda: gd_step(x, onehot),
                          "handwritten_numpy": lambda: ref(x, onehot)}, rounds, 10)
    return {"cpu_ms": ms, "ratio": ms["graphdl_numpy"] / ms["handwritten_numpy"],
            "target_wall_ratio": mlp.TARGETS["generic_vs_numpy_1thread"]}


def cnn_step(rounds: int) -> dict | None:
    """graphdl's cnn train step against torch eager, one thread each, thread CPU ms."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    model, step, x, y, _ = cnn.build_graphdl(64, 0, 0.01, 0.9, 1)
    net = cnn.torch_twin(model)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        opt.step()

    ms = cpu_interleaved({"graphdl": lambda: step(x, y), "torch_eager": torch_step},
                         rounds, 2)
    return {"cpu_ms": ms, "ratio": ms["graphdl"] / ms["torch_eager"],
            "target_wall_ratio_2_threads": cnn.TARGET_RATIO, "torch": torch.__version__}


def main(argv=None) -> dict:
    """Measure both ratios and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/cpu_ratios.json")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        result = {"benchmark": "cpu_ratios", "threads": 1, "rounds": args.rounds,
                  "clock": "time.thread_time (CPU time of the calling thread)",
                  "mlp_generic": mlp_generic(args.rounds), "cnn": cnn_step(args.rounds)}
    result["machine"] = {"cpus": os.cpu_count(), "numpy": np.__version__,
                         "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg")
                         else None}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
