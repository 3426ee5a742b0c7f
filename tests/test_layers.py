"""spa_service's layers import downward only: the shared modules import no layer, pipeline/ neither http/
nor offline/, offline/ not http/; and nothing in spa_service imports torch or the export side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
FORBIDDEN = {
    "shared": ("spa_service.pipeline", "spa_service.http", "spa_service.offline"),
    "pipeline": ("spa_service.http", "spa_service.offline"),
    "offline": ("spa_service.http",),
    "http": ("spa_service.offline",),
}
NEVER = ("torch", "spa_export")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVICE).with_suffix("").parts)
    return ".".join(["spa_service", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def imported(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def layer(path: Path) -> str:
    first = path.relative_to(SERVICE).parts[0]
    return first if first in ("pipeline", "http", "offline") else "shared"


@pytest.mark.parametrize("path", sorted(SERVICE.rglob("*.py")), ids=lambda p: str(p.relative_to(SERVICE)))
def test_imports_run_downward(path: Path) -> None:
    names = imported(path)
    wrong = sorted(n for n in names for prefix in FORBIDDEN[layer(path)] if n == prefix or n.startswith(prefix + "."))
    assert not wrong, f"{layer(path)} module imports {wrong}"
    assert not [n for n in names if n.split(".")[0] in NEVER], f"imports {names & set(NEVER)}"


def test_the_checker_sees_relative_imports() -> None:
    names = imported(SERVICE / "http" / "app.py")
    assert "spa_service.http.routes" in names and "spa_service.settings" in names
