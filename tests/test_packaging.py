"""What the package needs at run time: only what non-test code imports."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _imported_by(folders: list[str]) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found


def test_supabase_is_a_dev_dependency_only_tests_import() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "supabase" not in _imported_by(["app", "worker", "scaler"])
    assert "supabase" not in _names(project["dependencies"]), "the service never imports it"
    assert "supabase" in _names(project["optional-dependencies"]["dev"])
