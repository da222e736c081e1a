"""Verify mode: run graphs on seeded random feeds and name the pass that broke a result.

Passes never import a backend, so the caller supplies ``check(graph, feeds) -> outputs`` (all
outputs, updates included); :func:`graphdl.optimize` wires in the NumPy executor. Results are
compared norm-wise: ``max|got - want| <= atol + rtol * max|want|``. Where the unoptimized graph
gives NaN (log of a negative feed, say), any result is accepted: identities such as
``exp(log x) -> x`` hold only on their domain.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphdl.ir import FLOAT_DTYPES, Graph, GraphError

VERIFY_BATCH = 3  # symbolic dims get this size: not 1, so broadcasting mistakes show


class VerificationError(GraphError):
    """A pass changed a result of the graph beyond tolerance."""

    def __init__(self, message: str, pass_name: str, output: str, error: float,
                 graph: Graph | None = None, report=None):
        super().__init__(message)
        self.pass_name = pass_name
        self.output = output
        self.error = error
        self.graph = graph
        self.report = report


def random_feeds(graph: Graph, seed: int = 0, batch: int = VERIFY_BATCH) -> list[np.ndarray]:
    """Seeded feeds for the graph's inputs: normal floats, small non-negative ints (valid
    class labels and indices), random bools."""
    rng = np.random.default_rng(seed)
    feeds = []
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else batch for d in v.shape)
        if v.dtype in FLOAT_DTYPES:
            feeds.append(rng.standard_normal(shape).astype(v.dtype))
        elif v.dtype == "bool":
            feeds.append(rng.random(shape) < 0.5)
        else:
            feeds.append(rng.integers(0, 2, shape).astype(v.dtype))
    return feeds


def _named_results(graph: Graph, results) -> dict[str, np.ndarray]:
    named = {}
    n = len(graph.outputs)
    for i, (v, r) in enumerate(zip(graph.outputs, results[:n])):
        named[f"output {i} ({v.node.name or v.node.op})"] = np.asarray(r)
    for (var, _), r in zip(graph.updates, results[n:]):
        named[f"update of {var.name}"] = np.asarray(r)
    return named


def difference(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(error, tolerance scale): max abs difference where ``want`` is not NaN, and
    max |want|."""
    if got.shape != want.shape:
        return float("inf"), 0.0
    if want.dtype.kind not in "fc":
        return (0.0 if np.array_equal(got, want) else float("inf")), 0.0
    ok = ~np.isnan(want)
    if not ok.any():
        return 0.0, 0.0
    g, w = got[ok].astype(np.float64), want[ok].astype(np.float64)
    finite = np.isfinite(w)
    if not np.array_equal(g[~finite], w[~finite]):
        return float("inf"), 0.0
    if not finite.any():
        return 0.0, 0.0
    diff = np.abs(g[finite] - w[finite])
    return float(diff.max()), float(np.abs(w[finite]).max())


class Verifier:
    """Holds the unoptimized graph's results on fixed feeds and compares others to them."""

    def __init__(self, graph: Graph, check: Callable | None, mode, rtol: float, atol: float,
                 seed: int):
        if check is None:
            raise ValueError("verify mode runs graphs through a check(graph, feeds) callback; "
                             "passes import no backend, so pass one (gd.optimize wires the "
                             "NumPy executor)")
        self.mode = "end (bisected on mismatch)" if mode == "end" else "each pass"
        self.check = check
        self.rtol, self.atol = rtol, atol
        self.feeds = random_feeds(graph, seed)
        self.reference = _named_results(graph, check(graph, self.feeds))
        self.variables = {f"update of {var.name}": var for var, _ in graph.updates}

    def first_mismatch(self, graph: Graph) -> tuple[str, float, float] | None:
        """(output label, error, tolerance) of the first result out of tolerance, or None."""
        got = _named_results(graph, self.check(graph, self.feeds))
        for label, want in self.reference.items():
            have = got.get(label)
            if have is None:  # an update that was dropped must have been a no-op
                var = self.variables.get(label)
                have = None if var is None else np.asarray(var.value)
            if have is None:
                return label, float("inf"), 0.0
            err, scale = difference(have, want)
            tol = self.atol + self.rtol * scale
            if not err <= tol:
                return label, err, tol
        return None

    def check_pass(self, label: str, graph: Graph, report) -> None:
        """Raise :class:`VerificationError` naming ``label`` if ``graph`` disagrees."""
        bad = self.first_mismatch(graph)
        if bad is not None:
            output, err, tol = bad
            raise VerificationError(
                f"verify: pass {label} changed {output}: max difference {err:.3g} > "
                f"tolerance {tol:.3g} (seeded random feeds; the graph after the pass is "
                f"err.graph)", label, output, err, graph, report)

    def check_end(self, original: Graph, history: list[tuple[str, Graph]], report) -> None:
        """Check the final graph; on a mismatch, bisect the recorded passes for the first
        one whose result disagrees, and raise naming it."""
        if not history or self.first_mismatch(history[-1][1]) is None:
            return
        lo, hi = 0, len(history) - 1  # history[hi] is known bad
        while lo < hi:
            mid = (lo + hi) // 2
            if self.first_mismatch(history[mid][1]) is None:
                lo = mid + 1
            else:
                hi = mid
        self.check_pass(history[hi][0] + " [found by bisection]", history[hi][1], report)
