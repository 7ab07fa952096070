"""The import rules of ARCHITECTURE.md hold: each package of `service/` imports only the packages
its row of the rules table names (an AST walk over every file, imports in functions and under
`if TYPE_CHECKING:` included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO_ROOT / "ARCHITECTURE.md"
PACKAGE = "service"

ANYTHING = None
"""A rule that allows every import (the composition roots)."""

TEMPORARY_EXCEPTIONS: set[tuple[str, str]] = set()
"""(module, imported module) pairs allowed against the rules for a while; an exception that no
longer occurs fails the test, so it goes."""

Rules = dict[str, frozenset[str] | None]


def read_rules(text: str) -> Rules:
    """The `package | may import` table under the "Import rules" heading."""
    section = text.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    rules: Rules = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not re.fullmatch(r"`[\w.]+`", cells[0]):
            continue
        package, allowed = cells[0].strip("`"), cells[1]
        if allowed == "anything":
            rules[package] = ANYTHING
        elif allowed == "nothing":
            rules[package] = frozenset()
        else:
            rules[package] = frozenset(re.findall(r"`([\w.]+)`", allowed))
    return rules


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of a file under `root` (the folder that holds `service/`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from service import x` may import the module service.x
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def unit(module: str) -> str | None:
    """The package (or top-level module) of ours that a module belongs to; None if not ours."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else PACKAGE


def find_violations(root: Path, rules: Rules) -> tuple[list[str], set[tuple[str, str]]]:
    """Imports the rules forbid, as readable lines, and the temporary exceptions that occurred."""
    violations: list[str] = []
    used: set[tuple[str, str]] = set()
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        source = unit(module)
        assert source is not None
        if source == PACKAGE:  # service/__init__.py: the version string only
            continue
        if source not in rules:
            violations.append(f"{path.relative_to(root)}: package {source!r} has no rules row")
            continue
        allowed = rules[source]
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for line, name in imported_modules(tree, module, path.name == "__init__.py"):
            target = unit(name)
            if target is None or target == source or allowed is ANYTHING:
                continue
            if target in allowed or (target == PACKAGE and name == f"{PACKAGE}.__version__"):
                continue
            pair = next(
                (p for p in TEMPORARY_EXCEPTIONS if p[0] == module and name.startswith(p[1])),
                None,
            )
            if pair is not None:
                used.add(pair)
                continue
            may = ", ".join(sorted(allowed)) or "nothing of ours"
            violations.append(
                f"{path.relative_to(root)}:{line} imports {name}; {source} may import: {may}"
            )
    return violations, used


@pytest.fixture(scope="module")
def rules() -> Rules:
    return read_rules(ARCHITECTURE.read_text("utf-8"))


def test_the_rules_table_names_the_layers(rules: Rules) -> None:
    assert rules["ml"] == frozenset()
    assert rules["app"] is ANYTHING
    assert {"api", "db", "worker", "tools", "domain", "recommend", "registry"} <= set(rules)


def test_service_imports_follow_the_rules(rules: Rules) -> None:
    violations, used = find_violations(REPO_ROOT, rules)
    assert violations == []
    assert used == TEMPORARY_EXCEPTIONS, "remove exceptions that no longer occur"


def test_a_forbidden_import_is_reported(rules: Rules, tmp_path: Path) -> None:
    ml = tmp_path / PACKAGE / "ml"
    ml.mkdir(parents=True)
    (ml / "model.py").write_text("from service.ml.data import Interactions\n")
    (ml / "leak.py").write_text("def f() -> None:\n    from service.db import jobs\n")
    (tmp_path / PACKAGE / "newpackage").mkdir()
    (tmp_path / PACKAGE / "newpackage" / "__init__.py").write_text("from . import x\n")
    violations, _ = find_violations(tmp_path, rules)
    assert violations == [
        "service/ml/leak.py:2 imports service.db.jobs; ml may import: nothing of ours",
        "service/newpackage/__init__.py: package 'newpackage' has no rules row",
    ]
