"""The wheel installs the way users install it: build it, install it into a fresh virtual
environment, and import every module from there (not from the source tree).

Editable installs (CI's and the README's) hide a package missing from pyproject.toml's list;
this test does not. The fresh environment sees the current site-packages for the
dependencies (``--system-site-packages``) and installs the wheel with ``--no-deps``.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from "
                              "Python 3.11; the wheel test reads pyproject.toml with it")

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject.toml's package-dir)
SOURCE_PACKAGES = {"graphdl": "graphdl", "passes": "graphdl.passes",
                   "backends": "graphdl.backends"}

CHECK_INSTALLED = r"""
import importlib, importlib.metadata, importlib.util, os, pkgutil, sys
import graphdl
root = os.path.dirname(graphdl.__file__)
assert root.startswith(sys.prefix), f"graphdl imported from {root}, not the fresh venv"
names = ["graphdl"] + [m.name for m in pkgutil.walk_packages(graphdl.__path__, "graphdl.")]
for name in names:
    importlib.import_module(name)
assert graphdl.__version__ == importlib.metadata.version("graphdl"), graphdl.__version__
assert os.path.isfile(os.path.join(root, "py.typed")), "py.typed is not installed"
for top in ("passes", "backends"):
    assert importlib.util.find_spec(top) is None, f"a top-level package {top!r} is installed"
print("\n".join(names))
"""


def _source_modules() -> set[str]:
    """Every module in the source tree, as the dotted name it installs under."""
    names = set()
    for folder, package in SOURCE_PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            names.add(".".join([package, *parts]))
    return names


def test_module_level_imports_are_declared_dependencies():
    """A third-party module imported at module level (so by ``import graphdl`` or by the
    module's own import) is one of ``[project] dependencies``: the wheel test installs with
    ``--no-deps`` over this environment and would not notice a missing one."""
    import importlib.metadata as md
    import re

    declared = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    owners = md.packages_distributions()
    missing = set()
    for path in _source_files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("graphdl", "__future__"):
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert missing == set(), "imported at module level but not a declared dependency"


def _source_files() -> list[Path]:
    return [p for folder in SOURCE_PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))]


def test_package_list_covers_every_source_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in SOURCE_PACKAGES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *rel]))
    assert found - listed == set(), "packages missing from pyproject.toml's packages list"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the freshly built wheel installed; returns (venv python, bin dir,
    wheel path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build writes build/ and *.egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in SOURCE_PACKAGES:
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(dist), str(src)], cwd=tmp)
    (wheel,) = dist.glob("graphdl-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / ("python.exe" if sys.platform == "win32" else "python")
    # the outer interpreter's pip installs into the new environment's prefix
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], cwd=tmp)
    return python, bin_dir, wheel


def _run(cmd, cwd) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_holds_every_module_under_graphdl(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        files = [n for n in z.namelist() if n.endswith(".py")]
    in_wheel = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in files}
    assert _source_modules() - in_wheel == set(), "modules missing from the wheel"
    assert all(n.startswith("graphdl/") for n in files), \
        [n for n in files if not n.startswith("graphdl/")]


def test_every_module_imports_from_the_installed_wheel(installed, tmp_path):
    python, _, _ = installed
    imported = set(_run([python, "-c", CHECK_INSTALLED], cwd=tmp_path).split())
    assert _source_modules() <= imported


def test_installed_script_runs(installed, tmp_path):
    _, bin_dir, _ = installed
    out = _run([bin_dir / "graphdl", "--help"], cwd=tmp_path)
    assert "optimize" in out and "demo" in out
    version = _run([bin_dir / "graphdl", "--version"], cwd=tmp_path)
    assert version.split() == ["graphdl", _project_version()]


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
