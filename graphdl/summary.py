"""``model.summary()``: a table of the model's layers, read off its inference graph.

Layers name their final node after themselves and their variables ``"<layer>.<param>"``, so a
row is a named node; unnamed nodes that read a layer's variables (a Dense layer's MatMul before
its named bias Add) belong to that layer's row. Other unnamed ops on the data path (a
functional ``gd.relu`` or a residual add) get rows of their own, named after the op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from graphdl.ir import PARAM, Node, Variable
from graphdl.ops.registry import get_op


@dataclass
class SummaryRow:
    """One line of the summary: a layer (or a functional op) of the model."""

    name: str
    op: str
    shape: tuple
    variables: list[Variable] = field(default_factory=list)

    @property
    def params(self) -> int:
        """Trainable parameters this row owns."""
        return sum(v.value.size for v in self.variables if v.trainable)

    @property
    def state(self) -> int:
        """Non-trainable values this row owns (BatchNorm statistics)."""
        return sum(v.value.size for v in self.variables if not v.trainable)


def summary_rows(model) -> list[SummaryRow]:
    """The rows of ``model.summary()``, in schedule order."""
    graph = model.graph(training=False)
    named = {n.name for n in graph.nodes if n.name and not get_op(n.op).source}
    on_data_path: set[int] = {id(v.node) for v in graph.inputs}
    rows: list[SummaryRow] = []
    row_of_name: dict[str, SummaryRow] = {}
    counters: dict[str, int] = {}
    owner: dict[int, SummaryRow] = {}  # id(variable) -> row
    pending: list[tuple[Node, SummaryRow | None]] = []
    inner_ops: dict[str, list[str]] = {}  # layer name -> ops of its unnamed inner nodes
    for node in graph.nodes:
        if get_op(node.op).source:
            continue
        if any(id(v.node) in on_data_path for v in node.inputs):
            on_data_path.add(id(node))
        layer_vars = [v.node.attrs["variable"] for v in node.inputs if v.node.op == PARAM]
        if node.name:
            ops = inner_ops.pop(node.name, []) + [node.op]
            row = SummaryRow(node.name, "+".join(ops), node.outputs[0].shape)
            rows.append(row)
            row_of_name.setdefault(node.name, row)
        elif any(_layer_of(var) in named for var in layer_vars):
            row = None  # an inner node of a named layer: its variables go to that layer
            layer = next(_layer_of(v) for v in layer_vars if _layer_of(v) in named)
            inner_ops.setdefault(layer, []).append(node.op)
        elif id(node) in on_data_path:
            base = node.op.lower()
            counters[base] = counters.get(base, 0) + 1
            row = SummaryRow(f"{base}_{counters[base]}", node.op, node.outputs[0].shape)
            rows.append(row)
        else:
            continue
        pending.append((node, row))
    for node, row in pending:
        for v in node.inputs:
            if v.node.op != PARAM:
                continue
            var = v.node.attrs["variable"]
            if id(var) in owner:
                continue
            target = row_of_name.get(_layer_of(var), row)
            if target is not None:
                owner[id(var)] = target
                target.variables.append(var)
    return rows


def _layer_of(var: Variable) -> str:
    return var.name.rsplit(".", 1)[0]


def _fmt_shape(shape: tuple) -> str:
    dims = ", ".join("N" if isinstance(d, str) else str(d) for d in shape)
    return f"({dims}{',' if len(shape) == 1 else ''})"


def print_summary(model, print_fn: Callable[[str], Any] | None = None, console=None) -> None:
    """Print the summary table with rich (or line by line through ``print_fn``)."""
    from rich.console import Console  # lazy: rich adds ~0.15 s to `import graphdl`
    from rich.table import Table  # lazy: as above

    rows = summary_rows(model)
    table = Table(title=f"Model: {model.name}", title_justify="left")
    table.add_column("Layer", no_wrap=True)
    table.add_column("Op")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    for row in rows:
        params = f"{row.params:,}" if row.params else ("0" if not row.state else "")
        if row.state:
            params += f" (+{row.state:,} state)" if params else f"({row.state:,} state)"
        table.add_row(row.name, row.op, _fmt_shape(row.shape), params)
    trainable = model.num_params()
    total = model.num_params(trainable_only=False)
    footer = (f"Total params: {trainable:,} trainable, {total - trainable:,} non-trainable "
              f"state; {len(model.graph(training=False).nodes):,} graph nodes")
    if print_fn is not None:
        width_console = Console(width=120, record=True, file=_NullFile())
        width_console.print(table)
        for line in width_console.export_text().splitlines():
            print_fn(line)
        print_fn(footer)
        return
    console = console or Console()
    console.print(table)
    console.print(footer, highlight=False)


class _NullFile:
    """A write-only sink for rendering to text without printing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
