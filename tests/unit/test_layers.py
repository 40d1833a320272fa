"""The pure layer stays pure: ``shared/rules`` and ``shared/ports.py`` import only the standard
library, the time-zone data and each other. import-linter (in ``make lint``) checks the order of
the layers; this checks what it cannot: no third-party package creeps into the rules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# tzlocal ships the CLDR Windows <-> IANA zone table the exact-time rule needs (design §4).
ALLOWED_THIRD_PARTY = {"tzlocal", "tzdata"}
PURE = sorted((ROOT / "shared" / "rules").glob("*.py")) + [ROOT / "shared" / "ports.py"]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def offending(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if module == "shared.rules" or module.startswith("shared.rules."):
            continue
        if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY:
            continue
        bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pure_layer_imports_only_the_standard_library_and_itself(path: Path) -> None:
    assert offending(path) == []


def test_the_check_catches_an_adapter_import(tmp_path: Path) -> None:
    module = tmp_path / "shared" / "rules" / "planner.py"
    module.parent.mkdir(parents=True)
    module.write_text("import json\nfrom shared.store import tables\n\ndef f():\n    import requests\n")
    assert offending(module, tmp_path) == [
        "shared/rules/planner.py:2 imports shared.store",
        "shared/rules/planner.py:5 imports requests",
    ]
