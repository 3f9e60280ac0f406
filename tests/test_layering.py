"""Layers import one way: no import cycles among lit_distill, datamodules and recipes; the CLI is a leaf.

The graph is built from the source (AST): every ``import`` statement counts, at module
level, inside functions and under ``if TYPE_CHECKING:``, and so do the modules a package
names in :func:`lit_distill.lazy_exports.lazy_exports` (they are what its ``__getattr__``
imports). An edge goes to the module named (``from a.b import c`` is an edge to ``a.b.c``
when that is a module, else to ``a.b``); the implicit import of parent packages is not an
edge, as in every import-graph tool, or each subpackage would form a cycle with its parent.

Print the cycles of a checkout: ``python tests/test_layering.py [REPO_ROOT]``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lit_distill", "datamodules", "recipes")
# Optional modality libraries that importing the core must not load.
HEAVY = ("transformers", "torchaudio", "vector_quantize_pytorch", "timm", "open_clip", "torchvision")
# The only lit_distill modules that may import datamodules: commands that build data themselves.
LEAF_COMMANDS = frozenset({"lit_distill.quickstart", "lit_distill.cache_teacher", "lit_distill.codec_cli",
                           "lit_distill.generate", "lit_distill.speculate"})
# Loss modules whose job is a modality library's: they may load it (and nothing else heavy).
MODALITY_LOSSES = {"lit_distill.losses.audio": {"torchaudio"}}


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module of :data:`PACKAGES` under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` (source ``path``) imports, by any statement."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(target: str) -> None:
        while target and target not in modules:  # `a.b.Name` -> `a.b`
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" \
                and len(node.args) == 2 and isinstance(node.args[1], ast.Dict):
            for key in node.args[1].keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    add(key.value)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the modules it imports, over :data:`PACKAGES` in the checkout at ``root``."""
    modules = package_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]], limit: int = 200) -> list[list[str]]:
    """The graph's elementary cycles (at most ``limit``), each once, starting at its smallest module."""
    cycles: list[list[str]] = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack and len(cycles) < limit:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ()), reverse=True):
                if nxt == start:
                    cycles.append(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return sorted(cycles, key=lambda c: (len(c), c))


def format_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join([*cycle, cycle[0]]) for cycle in cycles) or "(none)"


def importers(graph: dict[str, set[str]], target_prefix: str) -> dict[str, set[str]]:
    """Module -> the modules starting with ``target_prefix`` that it imports (only modules that do)."""
    hits = {name: {t for t in targets if t == target_prefix or t.startswith(target_prefix + ".")}
            for name, targets in graph.items()}
    return {name: targets for name, targets in hits.items() if targets}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "lit_distill"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from lit_distill.lazy_exports import lazy_exports\n"
        "__getattr__, __dir__, __all__ = lazy_exports(__name__, {'lit_distill.sub.leaf': ['X']})\n")
    (pkg / "lazy_exports.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..typed import T\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from lit_distill.sub.leaf import f\nimport lit_distill.lazy_exports\n")
    found = import_graph(tmp_path)
    assert found["lit_distill"] == {"lit_distill.lazy_exports", "lit_distill.sub.leaf"}
    assert found["lit_distill.sub"] == {"lit_distill.sub.leaf"}           # relative
    assert found["lit_distill.sub.leaf"] == {"lit_distill.typed"}          # function level, relative
    assert found["lit_distill.typed"] == {"lit_distill.sub.leaf", "lit_distill.lazy_exports"}  # TYPE_CHECKING
    assert find_cycles(found) == [["lit_distill.sub.leaf", "lit_distill.typed"]]


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles among {PACKAGES}:\n{format_cycles(cycles)}"


def test_nothing_imports_the_cli(graph):
    assert set(importers(graph, "lit_distill.cli")) == {"lit_distill.__main__"}


def test_core_and_data_do_not_import_recipes(graph):
    offenders = {name for name in importers(graph, "recipes") if not name.startswith("recipes")}
    assert not offenders


def test_only_leaf_commands_import_datamodules(graph):
    offenders = {name for name in importers(graph, "datamodules") if name.startswith("lit_distill")}
    assert offenders <= LEAF_COMMANDS, sorted(offenders - LEAF_COMMANDS)


def test_cache_format_needs_neither_the_commands_nor_the_data(graph):
    assert graph["lit_distill.cache"] <= {"lit_distill.errors", "lit_distill.cache_codec"}
    assert graph["lit_distill.cache_codec"] <= {"lit_distill.errors"}  # the compact encoding: part of the format
    assert {t for t in graph["datamodules.teacher_cache"] if t.startswith("lit_distill")} == \
        {"lit_distill.cache", "lit_distill.errors"}


def test_library_builds_through_the_builder_not_the_cli(graph):
    for name in ("lit_distill.quickstart", "lit_distill.pipeline", "lit_distill.cache_teacher"):
        assert "lit_distill.build" in graph[name]
    assert graph["lit_distill.build"] == {"lit_distill.distillation_cli"}


_PROBE = """
import importlib, json, sys
heavy = {heavy!r}
report = {{}}
for name in {modules!r}:
    before = {{h for h in heavy if h in sys.modules}}
    importlib.import_module(name)
    report[name] = sorted({{h for h in heavy if h in sys.modules}} - before)
print(json.dumps(report))
"""


def test_importing_the_core_or_a_loss_module_loads_no_modality_library():
    """Each module is imported in turn in one fresh process; what each newly loads is reported.

    Order matters only for modules allowed a library (:data:`MODALITY_LOSSES`): they come last.
    """
    losses = sorted(n for n in package_modules(REPO) if n.startswith("lit_distill.losses."))
    light = [n for n in losses if n not in MODALITY_LOSSES]
    modules = ["lit_distill", "lit_distill.models", "lit_distill.callbacks", "datamodules",
               "lit_distill.contracts", "lit_distill.errors", "lit_distill.cache", *light, *MODALITY_LOSSES]
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY, modules=modules)],
                         capture_output=True, text=True, cwd=REPO, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(modules)
    offenders = {name: libs for name, libs in loaded.items() if set(libs) - MODALITY_LOSSES.get(name, set())}
    assert not offenders, f"modules that load optional modality libraries: {offenders}"


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO
    cycles = find_cycles(import_graph(root))
    print(f"{len(cycles)} import cycle(s) among {', '.join(PACKAGES)} in {root}:")
    print(format_cycles(cycles))
