"""Every name a script under scripts/ imports from pgi_detect exists, also the imports inside functions that only
a long run reaches (a moved function once crashed trajectory_vs_official.py --save after 640 training steps)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import REPO_ROOT

REPO = REPO_ROOT
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from pgi_detect... import name` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgi_detect":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_resolve(script):
    missing = []
    for line, module_name, name in package_imports(script):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")  # `from package import submodule`
            except ImportError:
                missing.append(f"{script.name}:{line}: {module_name}.{name}")
    assert not missing, missing
