"""The package's shape: no import cycle, no import between the 2D and 3D wings, floors never import a
wing or the CLI, modules stay small, and ruff's checks pass."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import cryopick

ROOT = Path(cryopick.__file__).parent
PKG = "cryopick"
MAX_LINES = 450
WINGS = ("cryopick.picker2d", "cryopick.picker3d")
TOP = ("cryopick.cli", "cryopick.__main__", "cryopick.app")  # layers above the wings


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = f
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    mods = _modules()
    graph = _graph(mods)
    # A package's __init__ importing its own submodules (a facade) is not a cycle.
    edges = {a: {b for b in bs if not (mods[a].name == "__init__.py" and b.startswith(a + "."))}
             for a, bs in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(v, path):
        state[v] = 1
        for w in edges[v]:
            if state.get(w) == 1:
                cycles.append(path[path.index(w):] + [w] if w in path else [v, w])
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v, [v])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_wings_do_not_import_each_other_and_floors_do_not_import_wings():
    graph = _graph(_modules())
    bad = []
    for a, bs in graph.items():
        for b in bs:
            if _in(a, WINGS[:1]) and _in(b, WINGS[1:]) or _in(a, WINGS[1:]) and _in(b, WINGS[:1]):
                bad.append(f"cross-wing: {a} -> {b}")
            floor = a != PKG and not _in(a, WINGS + TOP)
            if floor and _in(b, WINGS + TOP):
                bad.append(f"floor imports a higher layer: {a} -> {b}")
    assert not bad, "\n".join(bad)


def test_every_listed_layer_is_a_module_of_the_package():
    # A layer that names no module (a typo, a module moved away) silently exempts nothing and checks nothing.
    mods = _modules()
    missing = [m for m in WINGS + TOP if not any(_in(k, [m]) for k in mods)]  # a module, or a package of them
    assert not missing, f"listed as a layer but not a module of {PKG}: {missing}"


def test_only_the_top_layers_import_the_package_root():
    # The root is a facade that reaches every wing (lazily, so the cycle check cannot see it): a wing or floor
    # importing ``cryopick`` itself closes a hidden circle. The version lives in the leaf ``cryopick._version``.
    mods = _modules()
    bad = []
    for m, f in mods.items():
        if m == PKG or _in(m, TOP):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import) and any(a.name == PKG for a in node.names):
                bad.append(f"{m}: import {PKG}")
            elif isinstance(node, ast.ImportFrom) and node.module == PKG and not node.level:
                # ``from cryopick import picks`` names a submodule, not the root's own attributes
                bad += [f"{m}: from {PKG} import {a.name}" for a in node.names if f"{PKG}.{a.name}" not in mods]
    assert not bad, f"import the package root {PKG!r} (import what you need from its module instead): {bad}"


def test_one_version_everywhere():
    from cryopick._version import __version__
    from cryopick.picker2d.card import ModelCard

    pyproject = (ROOT.parents[1] / "pyproject.toml").read_text()
    assert 'version = { attr = "cryopick._version.__version__" }' in pyproject
    assert cryopick.__version__ == __version__ == ModelCard().cryopick_version


def test_facade_lists_every_lazy_name():
    assert set(cryopick._LAZY) <= set(cryopick.__all__)


def _wing_names(wing: str) -> set[str]:
    """Module and package names of a wing and of its ``train`` package (``train/loop``), without ``__init__``."""
    base = ROOT / wing
    names = {p.stem if p.is_file() else p.name for p in base.iterdir()
             if not p.name.startswith("_") and (p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))}
    names |= {f"train/{p.stem}" for p in (base / "train").glob("*.py") if not p.name.startswith("_")}
    return names


def test_one_name_one_idea_table_lists_exactly_the_names_both_wings_share():
    # A file name means one thing in both wings; docs/architecture.md says what, for every shared name.
    doc = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    section = doc.split("## One name, one idea", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    table = {cells[0].strip().strip("`"): cells for cells in rows}
    shared = _wing_names("picker2d") & _wing_names("picker3d")
    assert {"card", "pick", "predict", "scale", "train", "train/corpus"} <= shared
    assert set(table) == shared, f"shared but not in the table: {shared - set(table)}; " \
                                 f"in the table but not shared: {set(table) - shared}"
    assert all(cells[1].strip() and cells[2].strip() for cells in table.values())
    # the three names that used to mean different things in the two wings
    assert "calibrate" not in _wing_names("picker3d") and "train/pool" not in _wing_names("picker3d")
    assert "settings" not in _wing_names("picker2d")


@pytest.mark.parametrize("module, function", [
    ("cryopick.simulate.micrograph", "simulate_micrograph"), ("cryopick.simulate.tomogram", "simulate_tomogram"),
    ("cryopick.postprocess.peaks2d", "find_peaks_s1"), ("cryopick.postprocess.template_matching", "match_template"),
    ("cryopick.picker2d.batch", "pick_micrographs"), ("cryopick.picker3d.batch", "pick_tomograms"),
])
def test_long_functions_stay_split_and_take_a_settings_object(module, function):
    # They took 20+ parameters over 150+ lines: now a settings dataclass and named steps (docs/architecture.md).
    import importlib
    import inspect

    fn = getattr(importlib.import_module(module), function)
    lines = len(inspect.getsourcelines(fn)[0])
    assert lines <= 80, f"{module}.{function} has {lines} lines; split it into named steps"
    params = inspect.signature(fn).parameters
    named = [p for p in params.values() if p.kind is not p.VAR_KEYWORD]
    assert len(named) < 20 and len(named) < len(params)  # the tuning parameters came as **options


def test_modules_stay_small():
    big = {m: n for m, f in _modules().items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_package_is_typed():
    assert (ROOT / "py.typed").is_file()


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_passes():
    repo = ROOT.parents[1]
    result = subprocess.run(["ruff", "check", "--no-cache", "src", "tests", "benchmarks"], cwd=repo,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
