"""Conv, pooling and batch-norm kernels (forward and both gradients) vs torch eager, float32.

Ours and torch run in separate processes: torch's OpenMP workers and OpenBLAS's threads spin
while idle and would slow each other down in one process. Each timing is the minimum over
``--repeats`` runs (robust on a shared machine). Writes JSON to ``--out``.

Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv_kernels.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# (name, x shape (N, C, H, W), out channels, kernel, stride, padding, groups)
CONV_CONFIGS = [
    ("cnn.conv1 3->32 @32x32", (64, 3, 32, 32), 32, 3, 1, 1, 1),
    ("cnn.conv2 32->64 @16x16", (64, 32, 16, 16), 64, 3, 1, 1, 1),
    ("3x3 32->32 @32x32", (64, 32, 32, 32), 32, 3, 1, 1, 1),
    ("3x3 s2 64->128 @16x16", (64, 64, 16, 16), 128, 3, 2, 1, 1),
    ("1x1 64->64 @8x8", (64, 64, 8, 8), 64, 1, 1, 0, 1),
    ("depthwise 3x3 32 @16x16", (64, 32, 16, 16), 32, 3, 1, 1, 32),
]
# (name, x shape): 2x2/2 max pooling and batch norm as the cnn model uses them
POOL_CONFIGS = [("maxpool 2x2 @32x32", (64, 32, 32, 32)), ("maxpool 2x2 @16x16", (64, 64, 16, 16))]
BN_CONFIGS = [("batchnorm @32x32", (64, 32, 32, 32)), ("batchnorm @16x16", (64, 64, 16, 16))]


def best_ms(fn, repeats: int) -> float:
    """Minimum wall time of ``fn`` in ms, after two warm-up calls."""
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _inputs(shape, out_channels, kernel, groups, out_hw):
    g = np.random.default_rng(0)
    x = g.standard_normal(shape, dtype=np.float32)
    w = g.standard_normal((out_channels, shape[1] // groups, kernel, kernel), dtype=np.float32)
    dy = g.standard_normal((shape[0], out_channels) + out_hw, dtype=np.float32)
    return x, w, dy


def _out_hw(shape, kernel, stride, pad):
    return tuple((s + 2 * pad - kernel) // stride + 1 for s in shape[2:])


def measure_ours(repeats: int) -> dict:
    """Our kernels, called directly (no graph or executor overhead)."""
    from graphdl.ops import _norm_kernels as NK
    from graphdl.ops import _pool_kernels as PK
    from graphdl.ops._conv_kernels import conv2d_forward, conv2d_grad_input, conv2d_grad_weight
    from graphdl.ops._windows import window2d

    out = {}
    for name, shape, o, k, s, p, g in CONV_CONFIGS:
        x, w, dy = _inputs(shape, o, k, g, _out_hw(shape, k, s, p))
        attrs = {"strides": (s, s), "pads": (p,) * 4, "dilations": (1, 1), "group": g}
        out[name] = {
            "forward": best_ms(lambda: conv2d_forward(x, w, None, attrs), repeats),
            "grad_input": best_ms(lambda: conv2d_grad_input(dy, w, shape[2:], attrs), repeats),
            "grad_weight": best_ms(lambda: conv2d_grad_weight(x, dy, (k, k), attrs), repeats),
        }
    for name, shape in POOL_CONFIGS:
        x, _, dy = _inputs(shape, shape[1], 1, 1, tuple(d // 2 for d in shape[2:]))
        geo = window2d(shape[2:], (2, 2), (2, 2))
        out[name] = {"forward": best_ms(lambda: PK.max_pool(x, geo), repeats),
                     "backward": best_ms(lambda: PK.max_pool_grad(x, dy, geo), repeats)}
    for name, shape in BN_CONFIGS:
        g = np.random.default_rng(1)
        x = g.standard_normal(shape, dtype=np.float32)
        c = np.ones(shape[1], np.float32)
        out[name] = {
            "forward": best_ms(lambda: NK.batch_norm_train(x, c, c * 0, c * 0, c, 1e-5, 0.1),
                               repeats),
            "backward": best_ms(lambda: NK.batch_norm_grad(x, c, x, 1e-5), repeats)}
    return out


def measure_torch(repeats: int) -> dict:
    """torch eager: forward, and each gradient alone through aten.convolution_backward."""
    import torch
    import torch.nn.functional as F

    out = {}
    for name, shape, o, k, s, p, g in CONV_CONFIGS:
        x, w, dy = (torch.from_numpy(a) for a in _inputs(shape, o, k, g,
                                                          _out_hw(shape, k, s, p)))

        def backward(mask):
            return torch.ops.aten.convolution_backward(dy, x, w, None, [s, s], [p, p], [1, 1],
                                                       False, [0, 0], g, mask)
        out[name] = {
            "forward": best_ms(lambda: F.conv2d(x, w, None, s, p, 1, g), repeats),
            "grad_input": best_ms(lambda: backward([True, False, False]), repeats),
            "grad_weight": best_ms(lambda: backward([False, True, False]), repeats),
        }
    for name, shape in POOL_CONFIGS:
        x = torch.randn(shape, requires_grad=True)
        y = F.max_pool2d(x, 2)
        dy = torch.randn_like(y)
        out[name] = {"forward": best_ms(lambda: F.max_pool2d(x.detach(), 2), repeats),
                     "backward": best_ms(lambda: torch.autograd.grad(
                         F.max_pool2d(x, 2), x, dy), repeats) - best_ms(
                         lambda: F.max_pool2d(x, 2, return_indices=True), repeats)}
    for name, shape in BN_CONFIGS:
        x = torch.randn(shape, requires_grad=True)
        w = torch.ones(shape[1], requires_grad=True)
        b = torch.zeros(shape[1], requires_grad=True)
        mean, var = torch.zeros(shape[1]), torch.ones(shape[1])
        fwd = best_ms(lambda: F.batch_norm(x.detach(), mean, var, w.detach(), b.detach(),
                                           True), repeats)
        both = best_ms(lambda: torch.autograd.grad(F.batch_norm(x, mean, var, w, b, True),
                                                   [x, w, b], x.detach()), repeats)
        out[name] = {"forward": fwd, "backward": max(both - fwd, 0.0)}
    return out


def main(argv=None) -> None:
    """Measure both sides, print a table and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/bench_conv_kernels.json")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/OpenMP threads for both sides (default: the libraries' own)")
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (measure_ours if args.worker == "ours" else measure_torch)(args.repeats)
        print(json.dumps(result))
        return
    sides = {}
    env = dict(os.environ)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    for side in ("ours", "torch"):
        proc = subprocess.run([sys.executable, __file__, "--worker", side, "--repeats",
                               str(args.repeats)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            if side == "torch" and "No module named 'torch'" in proc.stderr:
                sides[side] = None
                continue
            raise RuntimeError(f"{side} worker failed:\n{proc.stderr}")
        sides[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {"dtype": "float32", "repeats": args.repeats, "unit": "ms (min)",
              "threads": args.threads or "default", "cpus": os.cpu_count(),
              "ours": sides["ours"], "torch": sides["torch"], "ratio": {}}
    for name, parts in sides["ours"].items():
        ref = (sides["torch"] or {}).get(name)
        total = sum(parts.values())
        ratio = total / sum(ref.values()) if ref else None
        report["ratio"][name] = ratio
        detail = "  ".join(f"{k} {v:6.2f}" + (f"/{ref[k]:6.2f}" if ref else "")
                           for k, v in parts.items())
        print(f"{name:28s} {detail}   ours/torch {ratio:.2f}" if ratio else f"{name:28s} "
              f"{detail}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
