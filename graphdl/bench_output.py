"""Output of ``graphdl bench``: JSON, a Markdown table, PNG charts and a console summary."""
from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from graphdl.atomic import atomic_path
from graphdl.passes.report import write_text_atomic

MIB = 1024 * 1024


def write_outputs(results: dict, json_path: str, plots: bool = True) -> list[str]:
    """Write ``results`` as JSON plus ``.md`` and PNG charts next to it; returns the paths."""
    folder = os.path.dirname(os.path.abspath(json_path))
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(json_path)[0]
    write_text_atomic(json_path, json.dumps(results, indent=2, default=_plain))
    md_path = stem + ".md"
    write_text_atomic(md_path, markdown(results))
    paths = [json_path, md_path]
    if plots:
        paths += write_charts(results, stem)
    return paths


def _plain(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def markdown(results: dict) -> str:
    """The key numbers as Markdown tables."""
    lines = ["# graphdl pass benchmark", ""]
    s = results["settings"]
    lines.append(f"Executor batch {s['batch']}, memory batch {s['memory_batch']}, "
                 f"min of {s['repeats']} runs.")
    lines += ["", "## Graphs", "",
              "| model | form | nodes before | nodes after | compile s | no-reuse MiB | "
              "planned MiB | bound MiB | planned/bound | planned/no-reuse | exec before ms | "
              "exec after ms | speedup |",
              "|" + "---|" * 13]
    for name, r in results["models"].items():
        for form in ("inference", "training"):
            g = r[form]
            m = g["memory"]
            ex = g.get("executor", {})
            lines.append(
                f"| {name} | {form} | {g['nodes_before']} | {g['nodes_after']} | "
                f"{g['compile_seconds']:.3f} | {_mib(m['no_reuse_bytes'])} | "
                f"{_mib(m['planned_bytes'])} | {_mib(m['lower_bound_bytes'])} | "
                f"{m['planned_over_bound']:.3f} | {m['planned_over_no_reuse']:.3f} | "
                + (f"{ex['seconds_before'] * 1e3:.1f} | {ex['seconds_after'] * 1e3:.1f} | "
                   f"{ex['speedup']:.2f} |" if ex else "| | |"))
    if any("onnx" in r for r in results["models"].values()):
        lines += ["", "## ONNX node counts (same exported inference model)", "",
                  "| model | exported | graphdl | ORT basic | onnxsim |", "|---|---|---|---|---|"]
        for name, r in results["models"].items():
            c = r.get("onnx")
            if c:
                lines.append(f"| {name} | {c['exported']} | {c['graphdl']} | {c['ort_basic']} "
                             f"| {c['onnxsim']} |")
    rows = [(n, r["training"]["memory"].get("internal")) for n, r in results["models"].items()]
    if any(i for _, i in rows):
        lines += ["", "## Training graphs, internal memory (state written back excluded, "
                  "MXNet's measure)", "", "| model | no-reuse MiB | planned MiB | ratio |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {_mib(i['no_reuse_bytes'])} | {_mib(i['planned_bytes'])} | "
                  f"{i['planned_over_no_reuse']:.3f} |" for n, i in rows if i]
    lines += ["", "## Time per pass (training graphs, seconds, all sweeps)", ""]
    names = sorted({p for r in results["models"].values() for p in r["training"]["per_pass"]})
    lines.append("| model | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for name, r in results["models"].items():
        pp = r["training"]["per_pass"]
        lines.append(f"| {name} | " + " | ".join(
            f"{pp[n]['seconds']:.3f}" if n in pp else "" for n in names) + " |")
    if "scaling" in results:
        sc = results["scaling"]
        lines += ["", f"## Scaling (fitted exponent {sc['exponent']:.2f} on CPU time, "
                  f"{sc['wall_exponent']:.2f} on wall time)", "",
                  "| nodes | nodes after | wall s | CPU s |", "|---|---|---|---|"]
        lines += [f"| {p['nodes']} | {p['nodes_after']} | {p['seconds']:.3f} | "
                  f"{p['cpu_seconds']:.3f} |" for p in sc["points"]]
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | {'yes' if v['ok'] else 'NO'} |"
              for k, v in results["targets"].items()]
    return "\n".join(lines) + "\n"


def write_charts(results: dict, stem: str) -> list[str]:
    """PNG bar charts: nodes per pass, memory (no reuse / planned / bound), ONNX node counts,
    and scaling."""
    try:  # lazy: matplotlib is the optional "plots" extra
        from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched
    except ImportError:
        return []
    paths = []
    models = list(results["models"])
    for form in ("inference", "training"):
        fig = Figure(figsize=(11, 4.5))
        ax = fig.subplots()
        width = 0.8 / max(1, len(models))
        for i, name in enumerate(models):
            rows = [r for r in results["models"][name][form]["rows"] if r["sweep"] == 1]
            labels = [rows[0]["pass"] + " (in)"] + [r["pass"] for r in rows] if rows else []
            counts = [rows[0]["nodes_before"]] + [r["nodes_after"] for r in rows] if rows else []
            xs = [j + i * width for j in range(len(counts))]
            ax.bar(xs, counts, width, label=name)
        if models:
            first = [r for r in results["models"][models[0]][form]["rows"] if r["sweep"] == 1]
            ax.set_xticks([j + 0.4 for j in range(len(first) + 1)])
            ax.set_xticklabels(["input"] + [r["pass"] for r in first], rotation=35, ha="right",
                               fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("nodes after pass (first sweep)")
        ax.set_title(f"Nodes per pass ({form} graphs)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        paths.append(_save(fig, f"{stem}_nodes_{form}.png"))
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    labels, bars = [], {"no reuse": [], "planned": [], "lower bound": []}
    for name in models:
        for form in ("inference", "training"):
            m = results["models"][name][form]["memory"]
            labels.append(f"{name}\n{form[:5]}")
            bars["no reuse"].append(m["no_reuse_bytes"] / MIB)
            bars["planned"].append(m["planned_bytes"] / MIB)
            bars["lower bound"].append(m["lower_bound_bytes"] / MIB)
    for k, (label, values) in enumerate(bars.items()):
        ax.bar([i + k * 0.27 for i in range(len(values))], values, 0.27, label=label)
    ax.set_xticks([i + 0.27 for i in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MiB")
    ax.set_title("Peak memory: no reuse vs planned vs lower bound")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, f"{stem}_memory.png"))
    onnx = {n: r["onnx"] for n, r in results["models"].items() if "onnx" in r}
    if onnx:
        fig = Figure(figsize=(10, 4))
        ax = fig.subplots()
        keys = ("exported", "graphdl", "ort_basic", "onnxsim")
        for k, key in enumerate(keys):
            vals = [c[key] if isinstance(c[key], int) else 0 for c in onnx.values()]
            ax.bar([i + k * 0.2 for i in range(len(vals))], vals, 0.2, label=key)
        ax.set_xticks([i + 0.3 for i in range(len(onnx))])
        ax.set_xticklabels(list(onnx))
        ax.set_ylabel("ONNX nodes")
        ax.set_title("ONNX node counts of the same exported inference model")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, f"{stem}_onnx_nodes.png"))
    if "scaling" in results:
        pts = results["scaling"]["points"]
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.loglog([p["nodes"] for p in pts], [p["seconds"] for p in pts], "o-", label="wall")
        ax.loglog([p["nodes"] for p in pts], [p["cpu_seconds"] for p in pts], "s--",
                  label="CPU")
        ax.legend()
        ax.set_xlabel("nodes")
        ax.set_ylabel("pipeline seconds")
        ax.set_title(f"Scaling (exponent {results['scaling']['exponent']:.2f})")
        fig.tight_layout()
        paths.append(_save(fig, f"{stem}_scaling.png"))
    return paths


def _save(fig, path: str) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def print_summary(results: dict) -> None:
    """A rich table of the targets."""
    t = Table(title="graphdl bench: targets")
    for col in ("target", "value", "met"):
        t.add_column(col)
    for k, v in results["targets"].items():
        t.add_row(k, str(v["value"]), "yes" if v["ok"] else "NO")
    Console().print(t)
