"""The package's shape: the core knows nothing of Dagster, and the Dagster layer uses only its public API."""

from __future__ import annotations

import ast
from pathlib import Path

import mdpipeline

PACKAGE = Path(mdpipeline.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_orchestration_layer_imports_dagster() -> None:
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if p.relative_to(PACKAGE).parts[0] != "orchestration"
                       and any(name.split(".")[0] in ("dagster", "dagster_postgres") for name in _imports(p)))
    assert offenders == []


def test_no_module_imports_dagsters_private_modules() -> None:
    offenders = sorted(f"{p.relative_to(PACKAGE)}: {name}" for p in PACKAGE.rglob("*.py") for name in _imports(p)
                       if name.startswith(("dagster._", "dagster_postgres._")))
    assert offenders == []
