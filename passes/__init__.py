"""Optimization passes and the pass manager (installed as ``graphdl.passes``)."""
from __future__ import annotations


def optimize_graph(graph, training: bool = True, passes=None, verify=False, check=None):
    """Run the default pipeline over ``graph``; returns the new graph and a report."""
    return graph, None
