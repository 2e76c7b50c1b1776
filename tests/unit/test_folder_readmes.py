"""Every folder of the code has a README that lists what is in it and says what it may import,
and lists nothing that is not there."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_CELL = re.compile(r"`([\w./<>-]+)`")


def code_folders() -> list[Path]:
    """The folders the build maps into ``p3s.*``, and every package folder under them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {ROOT / folder for folder in config["package-dir"].values()}
    found = set(tops)
    for top in tops:
        found |= {init.parent for init in top.rglob("__init__.py")}
    return sorted(found)


def listed(readme: Path) -> set[str]:
    """The names in the first cell of each table row (``| `a.py`, `b.py` | ... |``)."""
    names: set[str] = set()
    for line in readme.read_text().splitlines():
        if line.startswith("| `"):
            names |= set(_CELL.findall(line.split("|")[1]))
    return names


@pytest.mark.parametrize("folder", code_folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_folder_readme_is_true(folder: Path) -> None:
    readme = folder / "README.md"
    assert readme.is_file(), f"{folder.relative_to(ROOT)} has no README.md"
    text = readme.read_text()
    assert re.search(r"\bimport", text, re.IGNORECASE), f"{readme}: says nothing of its imports"
    names = listed(readme)
    modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    missing = sorted(m for m in modules if m not in names)
    assert not missing, f"{readme.relative_to(ROOT)} does not list {missing}"
    stale = sorted(n for n in names if n.endswith(".py") and not (folder / n).is_file())
    assert not stale, f"{readme.relative_to(ROOT)} lists {stale}, which are not there"
