"""The optimization report: one row per pass run, printable as a table, saved as JSON."""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from graphdl import atomic


@dataclass
class PassRow:
    """One run of one pass: what it saw, what it changed, what it cost."""

    stage: str
    sweep: int
    name: str
    nodes_before: int
    nodes_after: int
    removed: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    peak_bytes: int | None = None
    changed: bool = False
    rules: dict[str, int] = field(default_factory=dict)


@dataclass
class OptimizationReport:
    """What the pass manager did to a graph, pass by pass."""

    graph_name: str
    training: bool
    bindings: dict[str, int]
    nodes_before: int
    nodes_after: int = 0
    rows: list[PassRow] = field(default_factory=list)
    pass_seconds: float = 0.0
    instrument_seconds: float = 0.0
    converged: bool = True
    verified: str | None = None  # None, "each pass" or "end (bisected on mismatch)"
    memory: dict[str, Any] = field(default_factory=dict)
    peak_before: int | None = None
    # the final graph's MemoryPlan at ``bindings`` (``memory`` summarizes it); a runner of
    # that graph reuses it instead of planning again. Not part of the JSON.
    plan: Any = field(default=None, repr=False, compare=False)

    @property
    def total_seconds(self) -> float:
        """Wall time of the passes themselves (reporting and verification excluded)."""
        return self.pass_seconds

    def per_pass(self) -> dict[str, dict]:
        """Rows summed by pass name: runs, nodes removed (net), seconds."""
        out: dict[str, dict] = {}
        for r in self.rows:
            agg = out.setdefault(r.name, {"runs": 0, "net_nodes_removed": 0, "seconds": 0.0})
            agg["runs"] += 1
            agg["net_nodes_removed"] += r.nodes_before - r.nodes_after
            agg["seconds"] += r.seconds
        return out

    def to_dict(self) -> dict:
        """Plain data (what :meth:`to_json` writes)."""
        d = asdict(replace(self, plan=None))
        del d["plan"]
        d["total_seconds"] = self.total_seconds
        d["per_pass"] = self.per_pass()
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable)

    def save(self, path: str) -> None:
        """Write the JSON report to ``path`` (temp file, then rename)."""
        write_text_atomic(path, self.to_json())

    def table(self):
        """A ``rich.table.Table`` with one row per pass run that changed something (plus the
        first sweep of each stage, so every pass in the pipeline shows up)."""
        from rich.table import Table  # lazy: rich adds ~0.15 s to `import graphdl`

        t = Table(title=f"graphdl passes: {self.graph_name} "
                        f"({'training' if self.training else 'inference'})")
        for col, just in (("stage", "left"), ("sweep", "right"), ("pass", "left"),
                          ("nodes", "right"), ("removed / added", "left"),
                          ("ms", "right"), ("peak", "right")):
            t.add_column(col, justify=just)
        shown_first: set[tuple[str, str]] = set()
        for r in self.rows:
            first = (r.stage, r.name) not in shown_first
            shown_first.add((r.stage, r.name))
            if not (r.changed or first):
                continue
            t.add_row(r.stage, str(r.sweep), r.name, f"{r.nodes_before} -> {r.nodes_after}",
                      _diff(r.removed, r.added), f"{r.seconds * 1e3:.1f}",
                      "" if r.peak_bytes is None else human_bytes(r.peak_bytes))
        mem = self.memory
        caption = [f"{self.nodes_before} -> {self.nodes_after} nodes in "
                   f"{self.pass_seconds * 1e3:.0f} ms"]
        if mem:
            caption.append(f"memory at {_fmt_bindings(self.bindings)}: no reuse "
                           f"{human_bytes(mem['no_reuse_bytes'])}, planned "
                           f"{human_bytes(mem['planned_bytes'])}, lower bound "
                           f"{human_bytes(mem['lower_bound_bytes'])}")
        if not self.converged:
            caption.append("stopped at the sweep limit before a fixed point")
        if self.verified:
            caption.append(f"verified: {self.verified}")
        t.caption = "; ".join(caption)
        return t

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console  # lazy: rich adds ~0.15 s to `import graphdl`

        buf = io.StringIO()
        Console(file=buf, width=130, color_system=None).print(self.table())
        return buf.getvalue()


def _diff(removed: dict, added: dict) -> str:
    parts = [f"-{n} {op}" for op, n in sorted(removed.items(), key=lambda kv: -kv[1])[:4]]
    parts += [f"+{n} {op}" for op, n in sorted(added.items(), key=lambda kv: -kv[1])[:3]]
    more = len(removed) + len(added) - len(parts)
    return ", ".join(parts) + (f", ... ({more} more)" if more > 0 else "")


def _fmt_bindings(b: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in b.items()) or "static shapes"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, text)
