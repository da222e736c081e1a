"""The layer map (README, "Layers"): every import points down the stack.

The modules' imports are read with ``ast``, not executed. A module-level import may only name
a module of its own layer or a lower one. An import inside a function is allowed only with a
``# lazy: <reason>`` comment on its line or the line above (it exists to keep ``import graphdl``
or ``graphdl --help`` fast, or to keep an optional dependency optional), and it too may not
point up the stack. Library code never touches pyplot's global state.
"""
from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = {"graphdl": "graphdl", "passes": "graphdl.passes",
                   "backends": "graphdl.backends"}

# Bottom to top. A module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ir", ("graphdl.ir", "graphdl.dims", "graphdl.atomic", "graphdl.version",
            "graphdl.feeds", "graphdl.comm")),
    ("ops", ("graphdl.ops",)),
    ("tensor", ("graphdl.tensor",)),
    ("passes", ("graphdl.passes",)),
    ("backends", ("graphdl.backends",)),
    ("front end", ("graphdl.autodiff", "graphdl.layers", "graphdl.losses", "graphdl.optim",
                   "graphdl.modes", "graphdl.callbacks", "graphdl.progress",
                   "graphdl.summary", "graphdl.amp")),
    ("model", ("graphdl.model", "graphdl.model_io", "graphdl.training", "graphdl.compiled_function",
               "graphdl.compiler",
               "graphdl.optimization", "graphdl.distributed", "graphdl.split_step")),
    ("top", ("graphdl", "graphdl.cli", "graphdl.models", "graphdl.demo", "graphdl.bench",
             "graphdl.bench_output", "graphdl.launch")),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the layer ``module`` belongs to."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS"
    return best


def source_modules() -> dict[str, Path]:
    """Every module of the source tree by the dotted name it installs under."""
    found = {}
    for folder, package in SOURCE_PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([package, *[p for p in rel if p != "__init__"]])] = path
    return found


MODULES = source_modules()


def imports_of(module: str, source: str, is_package: bool):
    """(line, imported graphdl module, inside a function?) for every graphdl import."""
    tree = ast.parse(source)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package[:len(package) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            yield node.lineno, name, id(node) in in_function


def violations(module: str, path: Path, root: Path = ROOT) -> list[str]:
    """Every import in ``module`` (the file ``path``) that breaks the layer map, as lines
    naming the file (relative to ``root``) and line."""
    source = path.read_text()
    lines = source.splitlines()
    here = layer_of(module)
    found = []
    explained: set[int] = set()
    for lineno, name, lazy in imports_of(module, source, path.name == "__init__.py"):
        where = f"{path.relative_to(root)}:{lineno}"
        if lazy and lineno not in explained:
            explained.add(lineno)
            context = lines[lineno - 1] + (lines[lineno - 2] if lineno > 1 else "")
            if "# lazy:" not in context:
                found.append(f"{where}: function-level import of {name} without a "
                             "'# lazy: <reason>' comment (import it at module level)")
        if name == "graphdl" or name.startswith("graphdl."):
            there = layer_of(name)
            if there > here:
                found.append(f"{where}: {module} ({LAYERS[here][0]}) imports {name} "
                             f"({LAYERS[there][0]}), which is higher up the stack")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_stack(module):
    assert violations(module, MODULES[module]) == []


def test_the_check_catches_an_upward_and_an_unexplained_lazy_import(tmp_path):
    bad = tmp_path / "ir.py"
    bad.write_text("from graphdl.tensor import add\n\n\ndef f():\n    import graphdl.ops\n")
    found = violations("graphdl.ir", bad, tmp_path)
    assert "ir.py:1: graphdl.ir (ir) imports graphdl.tensor (tensor), which is higher up " \
           "the stack" in found
    assert any(v.startswith("ir.py:5: function-level import of graphdl.ops without") for v in found)
    bad.write_text("def f():\n    import graphdl.ops  # lazy: a reason\n")
    assert violations("graphdl.ir", bad, tmp_path) == [
        "ir.py:2: graphdl.ir (ir) imports graphdl.ops (ops), which is higher up the stack"]
    bad.write_text("def f():\n    # lazy: a reason\n    from graphdl import atomic\n")
    assert violations("graphdl.ir", bad, tmp_path) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_placed_in_a_layer(module):
    """A new module is placed in the map deliberately (only the package itself is "top" by
    the bare ``graphdl`` prefix)."""
    prefixes = [p for _, ps in LAYERS for p in ps
                if p != "graphdl" and (module == p or module.startswith(p + "."))]
    assert prefixes or module == "graphdl", \
        f"{module} is in no layer: add it to LAYERS here and to the README's layer map"


def test_every_layer_prefix_names_a_module():
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in MODULES), \
                f"layer {name!r} lists {prefix}, which does not exist"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_library_code_leaves_pyplot_alone(module):
    """Plots use ``matplotlib.figure.Figure`` directly: no pyplot, no ``matplotlib.use``, so
    a user's plotting backend and open figures are never touched."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(not a.name.startswith("matplotlib.pyplot") for a in node.names), module
        elif isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("matplotlib.pyplot"), module
            assert not (node.module == "matplotlib" and any(a.name == "pyplot"
                                                            for a in node.names)), module
        elif isinstance(node, ast.Attribute) and node.attr == "use":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "matplotlib"), \
                f"{module} calls matplotlib.use"


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if not m.startswith("graphdl.backends")))
def test_only_backends_import_onnx(module):
    """``onnx`` and ``onnxruntime`` stay behind ``graphdl.backends``."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        for name in names:
            top = name.split(".")[0]
            assert top not in ("onnx", "onnxruntime"), f"{module} imports {name}"


def test_no_public_name_hides_a_submodule():
    """A function or class exported as ``gd.<name>`` never shares its name with a module
    ``graphdl.<name>``: the attribute would hide the module (``gd.compile`` once hid
    ``graphdl.compile``, ``gd.optimize`` ``graphdl.optimize``), and reaching the module would
    need an importlib trick."""
    import graphdl

    submodules = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    hiding = sorted(name for name in dir(graphdl) if not name.startswith("_")
                    and name in submodules and not (
                        isinstance(getattr(graphdl, name), types.ModuleType)
                        and getattr(graphdl, name).__name__ == f"graphdl.{name}"))
    assert not hiding, f"gd.{hiding[0]} hides the module graphdl.{hiding[0]}: rename one"
    assert "optimization" in submodules and "optimize" in dir(graphdl)  # the check's inputs
