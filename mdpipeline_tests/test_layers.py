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


# The layers, highest first (docs/architecture.md, "Layers"): a module may import its own layer and the
# ones below it, never one above. Keys are a package (`storage`) or a top-level module (`sessions`).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "arguments"),
    ("orchestration",),
    ("chain", "stream", "lineage"),
    ("distribute", "serve", "read", "devservices"),
    ("enrich", "quality"),
    ("normalize",),
    ("storage",),
    ("providers",),
    ("contracts", "settings", "sessions", "universe", "chunks", "env_numbers", "output", "yaml_files"),
)
# Known upward imports, each with the change that removes it; nothing else may be added here.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _unit(parts: tuple[str, ...]) -> str:
    """The layer unit of a module path inside the package: its subpackage, or the top-level module."""
    return parts[0].removesuffix(".py")


def _rank(unit: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if unit in layer:
            return rank
    raise AssertionError(f"mdpipeline.{unit} has no layer: add it to LAYERS and to docs/architecture.md")


def _package_imports(path: Path) -> set[str]:
    """The package modules `path` imports, at any depth in the file (the package uses absolute imports only)."""
    return {name for name in _imports(path) if name.startswith("mdpipeline.")}


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if parts != ("__init__.py",):
            _rank(_unit(parts))


def test_imports_run_down_the_layers() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):
            continue
        own = _rank(_unit(parts))
        for name in sorted(_package_imports(path)):
            target = name.split(".")[1]
            if _rank(target) < own and ("/".join(parts), name) not in ALLOWED_UPWARD:
                offenders.append(f"{'/'.join(parts)} imports {name} ({target} is above {_unit(parts)})")
    assert offenders == [], "\n".join(offenders)


def test_the_allowed_upward_imports_still_exist() -> None:
    """An exception that is no longer needed is removed, so the list only shrinks."""
    for file, name in ALLOWED_UPWARD:
        assert name in _package_imports(PACKAGE / file), f"{file} no longer imports {name}: drop the exception"
