"""The dependency rule of the tree, read from the source: every ``import`` and ``from ... import``
of the project, at module level or inside a function, under the ``p3s.*`` names that the build
(``pyproject.toml``'s ``package-dir``) gives the folders.

Layers, lowest first (each folder's README states its line of this table):

- ``payloads/``: nothing of the project (plain numpy; they run where p3s is not installed).
- ``blocks/``: nothing of the project (Prefect block documents, loaded by the server too).
- the library, ``p3s/{system,files,dqm,jobs,workflows,pilots,alarms}``: the payloads, the
  blocks and itself, its folders without a cycle between them; no flow, task, deployment or UI
  module.
- ``tasks/``: the library; ``flows/``: the tasks and the library.
- ``deployments/`` and ``ui_extensions/``: the library only.
- the entry points, ``p3s/cli`` and ``p3s/stack`` (``p3s up``/``down``, the demo): anything.

No cycle between modules either.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]

LOW = {"payloads", "blocks"}
ALLOWED: dict[str, set[str]] = {
    "payloads": set(),
    "blocks": set(),
    "library": LOW,
    "tasks": {"library"} | LOW,
    "flows": {"tasks", "library"} | LOW,
    "deployments": {"library"} | LOW,
    "ui": {"library"} | LOW,
    "entry": {"library", "tasks", "flows", "deployments", "ui"} | LOW,
}
ENTRY_PACKAGES = ("p3s.cli", "p3s.stack")


@dataclass(frozen=True)
class Import:
    """One import of a project module: who, what, where."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def package_dirs(root: Path) -> dict[str, Path]:
    """The ``p3s.*`` package of each project folder, as the build maps them."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: root / folder for name, folder in config["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Every project module by its dotted name."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs(root).items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            # A folder mapped on its own (p3s.flows = flows/) wins over the same file reached
            # through its parent's folder.
            found.setdefault(name, path)
    return found


def _imports_of(name: str, path: Path, known: dict[str, Path], root: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):  # walk: imports inside functions count as much as the others
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found = set()
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
        for target in sorted(found):
            yield Import(name, target, path.relative_to(root), node.lineno)


def project_imports(root: Path) -> list[Import]:
    known = modules(root)
    return [found for name, path in known.items() for found in _imports_of(name, path, known, root)]


def layer(module: str) -> str:
    """The layer of a project module (see the table above)."""
    parts = module.split(".")
    if module.startswith(ENTRY_PACKAGES):
        return "entry"
    if len(parts) > 1 and parts[1] in {"payloads", "blocks", "tasks", "flows", "deployments"}:
        return parts[1]
    if len(parts) > 1 and parts[1] == "ui_extensions":
        return "ui"
    return "library"


def library_folder(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(root: Path) -> list[str]:
    """What breaks the rule in the tree at ``root``: forbidden imports, then cycles."""
    found = project_imports(root)
    faults = [
        f"{imp} ({layer(imp.importer)} may not import {layer(imp.imported)})"
        for imp in found
        if layer(imp.imported) != layer(imp.importer)
        and layer(imp.imported) not in ALLOWED[layer(imp.importer)]
    ]
    graph = nx.DiGraph((imp.importer, imp.imported) for imp in found)
    faults += [f"import cycle: {' -> '.join([*c, c[0]])}" for c in nx.simple_cycles(graph)]
    folders = nx.DiGraph()
    for imp in found:
        ends = library_folder(imp.importer), library_folder(imp.imported)
        if layer(imp.importer) == layer(imp.imported) == "library" and ends[0] != ends[1]:
            folders.add_edge(*ends, example=imp)
    for cycle in nx.simple_cycles(folders):
        closing = [folders.edges[a, b]["example"] for a, b in pairwise([*cycle, cycle[0]])]
        faults.append(
            f"library folders import each other: {' -> '.join([*cycle, cycle[0]])} "
            f"({'; '.join(map(str, closing))})"
        )
    return faults


def test_the_tree_keeps_the_dependency_rule() -> None:
    assert violations(ROOT) == []


def test_the_rule_reads_every_folder_and_inner_imports() -> None:
    names = modules(ROOT)
    assert {"p3s.payloads.tpc_monitor", "p3s.flows.dqm", "p3s.tasks.settle"} <= set(names)
    assert {"p3s.ui_extensions.app", "p3s.deployments.work_pool", "p3s.cli"} <= set(names)
    inner = [i for i in project_imports(ROOT) if i.importer == "p3s.cli.ui"]
    assert any(i.imported == "p3s.ui_extensions.service" for i in inner)  # inside a function


def _copy_tree(tmp_path: Path) -> Path:
    config = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(config)
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs(ROOT).values()}:
        for path in (ROOT / folder).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    return tmp_path


@pytest.mark.parametrize(
    ("module", "added", "named"),
    [
        # the library reaching up into a flow, inside a function as the old loops did
        ("p3s/files/lifecycle.py", "def _f():\n    from p3s.flows.dqm import dqm_run\n", "flows"),
        ("ui_extensions/app.py", "from p3s.tasks import quality\n", "ui may not import tasks"),
        ("payloads/purity.py", "from p3s.system.settings import Settings\n", "payloads may not"),
        ("tasks/stage.py", "from ..flows import dqm\n", "tasks may not import flows"),
        ("p3s/system/ports.py", "from p3s.files import storage\n", "library folders import"),
    ],
)
def test_a_forbidden_import_is_named(tmp_path: Path, module: str, added: str, named: str) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + "\n" + added)
    faults = violations(tree)
    assert faults, f"adding {added!r} to {module} went unnoticed"
    assert any(named in fault for fault in faults), faults
    assert any(module in fault for fault in faults), faults  # the file at fault is named
