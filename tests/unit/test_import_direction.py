"""Imports point down only: interfaces → storage → dht → native.

Every module of the four packages is parsed with ``ast``; any import of a layer above the
importing module's own layer fails the test with the offending file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("interfaces", "storage", "dht", "native")  # top to bottom
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _imported_packages(tree: ast.AST, package_parts: list[str]) -> list[tuple[str, int]]:
    """Return (top-level package, line) for every import in ``tree``, resolving relative ones."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                top = base[0] if base else ""
            else:
                top = (node.module or "").split(".")[0]
            found.append((top, node.lineno))
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    """List every import that points from a lower layer to a higher one."""
    problems: list[str] = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py*")):
            if path.suffix not in (".py", ".pyx", ".pyi"):
                continue
            if path.suffix == ".pyx":
                continue  # Cython: checked by the native build, imports nothing of ours
            parts = list(path.relative_to(root).with_suffix("").parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for top, line in _imported_packages(
                tree, parts[:-1] if parts[-1] != "__init__" else parts
            ):
                if top in RANK and RANK[top] < RANK[layer]:
                    problems.append(f"{path.relative_to(root)}:{line}: {layer} imports {top}")
    return problems


def test_imports_point_down() -> None:
    assert upward_imports() == []


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "dht" / "bad.py").write_text("import os\nfrom storage import kv\n")
    (tmp_path / "native" / "worse.py").write_text("from interfaces.s3 import app\n")
    (tmp_path / "storage" / "fine.py").write_text("from dht import rpc\nfrom . import x\n")
    assert upward_imports(tmp_path) == [
        "dht/bad.py:2: dht imports storage",
        "native/worse.py:1: native imports interfaces",
    ]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_a_package(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
    assert (ROOT / layer / "py.typed").is_file()
