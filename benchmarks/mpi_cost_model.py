"""An alpha-beta cost model of ring all-reduce for data-parallel training (used by
bench_mpi.py).

Ring all-reduce of ``n`` bytes over ``p`` ranks: ``2 (p - 1)`` steps, each paying the latency
``alpha`` and moving ``n / p`` bytes at ``beta`` seconds per byte:

    T(n, p) = 2 (p - 1) alpha + 2 (p - 1) / p * n * beta          (Patarasuk & Yuan; Horovod)

With gradients in buckets ``n_1..n_k`` the step pays ``sum_i T(n_i, p)``. A data-parallel step
is ``compute + exposed communication``; with overlap, the all-reduce of a bucket runs while
the rest of the backward pass computes, so only what runs past the backward pass is exposed
(see :func:`step_seconds`). Weak-scaling efficiency is ``compute / step``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AlphaBeta:
    """Latency ``alpha`` (seconds per message step) and inverse bandwidth ``beta`` (seconds
    per byte) of one link of the ring."""

    alpha: float
    beta: float

    def allreduce_seconds(self, nbytes: float, ranks: int) -> float:
        """One ring all-reduce of ``nbytes`` over ``ranks``."""
        if ranks <= 1:
            return 0.0
        return 2 * (ranks - 1) * self.alpha + 2 * (ranks - 1) / ranks * nbytes * self.beta

    def buckets_seconds(self, buckets: list[float], ranks: int) -> float:
        """All-reduces of every bucket, one after the other."""
        return sum(self.allreduce_seconds(b, ranks) for b in buckets)

    @staticmethod
    def link(gbit_per_s: float, alpha: float) -> "AlphaBeta":
        """A network link of ``gbit_per_s`` with latency ``alpha``."""
        return AlphaBeta(alpha, 8.0 / (gbit_per_s * 1e9))


def calibrate(sizes_bytes: list[float], seconds: list[float], ranks: int = 2,
              near: list[float] | None = None, factor: float = 4.0) -> AlphaBeta:
    """Least-squares alpha and beta from all-reduce timings at ``ranks`` ranks:
    ``t = 2 (p-1) alpha + 2 (p-1)/p n beta`` is linear in (alpha, beta).

    With ``near`` (the message sizes to be predicted, e.g. a step's buckets), only the
    timings within ``factor`` of those sizes are fitted (at least the two nearest): on one
    machine the cost per byte changes once messages outgrow the caches (shared memory runs
    at cache speed below a few MB and at memory speed above), so one line through every size
    mispredicts the large ones (measured: 64 MiB took 2.8x the global fit)."""
    if near:
        lo, hi = min(near) / factor, max(near) * factor
        keep = [i for i, n in enumerate(sizes_bytes) if lo <= n <= hi]
        if len(keep) < 2:
            centre = np.sqrt(min(near) * max(near))
            keep = sorted(range(len(sizes_bytes)),
                          key=lambda i: abs(np.log(sizes_bytes[i] / centre)))[:2]
        sizes_bytes = [sizes_bytes[i] for i in keep]
        seconds = [seconds[i] for i in keep]
    p = ranks
    a = np.array([[2 * (p - 1), 2 * (p - 1) / p * n] for n in sizes_bytes], float)
    t = np.asarray(seconds, float)
    # relative least squares: small messages weigh as much as large ones
    w = 1.0 / np.maximum(t, 1e-9)
    (alpha, beta), *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
    return AlphaBeta(max(float(alpha), 0.0), max(float(beta), 0.0))


def bucket_sizes(total_bytes: float, bucket_bytes: float | None,
                 tensor_bytes: list[float] | None = None) -> list[float]:
    """Bucket payloads: greedy packing of ``tensor_bytes`` (or ``total_bytes`` cut into
    ``bucket_bytes``); ``None`` means one all-reduce per tensor."""
    if bucket_bytes is None:
        return list(tensor_bytes) if tensor_bytes else [total_bytes]
    if tensor_bytes:
        out, current = [], 0.0
        for b in tensor_bytes:
            if current and current + b > bucket_bytes:
                out.append(current)
                current = 0.0
            current += b
        return out + ([current] if current else [])
    full, rest = divmod(total_bytes, bucket_bytes)
    return [bucket_bytes] * int(full) + ([rest] if rest else [])


def step_seconds(compute: float, buckets: list[float], ranks: int, link: AlphaBeta,
                 overlap: bool = False, backward_fraction: float = 2.0 / 3.0) -> float:
    """Compute plus the exposed all-reduce time.

    Without overlap every all-reduce runs after the backward pass. With overlap, bucket i is
    ready when the backward pass has produced its share of the gradient bytes (buckets in
    backward order over the last ``backward_fraction`` of the compute) and the link reduces
    one bucket at a time, so only what runs past the end of the backward pass is exposed
    (at least the last bucket's all-reduce).
    """
    if not overlap:
        return compute + link.buckets_seconds(buckets, ranks)
    total = sum(buckets) or 1.0
    forward = compute * (1.0 - backward_fraction)
    backward = compute * backward_fraction
    link_free, done = 0.0, 0.0
    for b in buckets:
        done += b
        ready = forward + backward * done / total
        link_free = max(ready, link_free) + link.allreduce_seconds(b, ranks)
    return max(compute, link_free)


def efficiency(compute: float, buckets: list[float], ranks: int, link: AlphaBeta,
               overlap: bool = False) -> float:
    """Weak-scaling efficiency: one rank's step over the ``ranks``-rank step."""
    return compute / step_seconds(compute, buckets, ranks, link, overlap)
