"""The package's shape (DESIGN.md, "The package, one room per concern"): imports at the top of
each module, none from the package's face, and no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmlab"
MODULES = sorted(PACKAGE.rglob("*.py"))
OPTIONAL = {"tomllib"}  # standard library from Python 3.11 on; the CLI works without it on 3.10


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, tree: ast.Module) -> set[str]:
    """The lmlab modules ``path`` imports at module level (``from . import x`` counts as the
    submodule x when there is one, else as the package itself)."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lmlab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.split(".")[0] == "lmlab":
                base = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = any(_name(m) == sub for m in MODULES)
                found.add(sub if is_module else base)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_sit_at_the_top_and_never_use_the_package_face(path):
    tree = ast.parse(path.read_text())
    top_level = set(map(id, tree.body))
    late = [f"line {node.lineno}" for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level
            and not any(a.name in OPTIONAL for a in node.names)
            and not _inside_top_level_try(tree, node)]
    assert not late, f"{path.name}: imports inside functions or classes at {late}"
    if path != PACKAGE / "__init__.py":
        assert "lmlab" not in _imported_modules(path, tree), \
            f"{path.name} imports from lmlab/__init__.py: import from the module that defines it"


def _inside_top_level_try(tree: ast.Module, node: ast.AST) -> bool:
    """An optional dependency: ``try: import x`` / ``except ModuleNotFoundError`` at the top."""
    return any(isinstance(top, ast.Try) and any(n is node for n in ast.walk(top))
               for top in tree.body)


def test_no_import_circle():
    graph = {_name(p): _imported_modules(p, ast.parse(p.read_text())) for p in MODULES}
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done or module not in graph:
            return
        path.append(module)
        for dep in graph[module]:
            if dep != "lmlab":  # the face imports its modules; they never import it back
                visit(dep)
        path.pop()
        done.add(module)

    for module in graph:
        if module != "lmlab":
            visit(module)
