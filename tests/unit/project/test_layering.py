"""The package layout is enforced, not just described: import-linter's contracts (.importlinter: layers, Lightning
kept out of the pure-torch packages, training using inference only through its public API, no cycles), and no
import hidden inside a function without a comment saying why."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from conftest import REPO_ROOT

REPO = REPO_ROOT
SOURCE = REPO / "src" / "pgi_detect"


def test_import_contracts_are_kept():
    # A subprocess: import-linter configures logging with dictConfig, which would silence this process's loggers.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache", str(REPO / ".importlinter")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every import statement inside a function body."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [(inner.lineno, path.read_text().splitlines()[inner.lineno - 1])
                      for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))]
    return found


def test_imports_inside_functions_say_why():
    lines_of = {}
    unexplained = []
    for path in sorted(SOURCE.rglob("*.py")):
        for lineno, text in function_level_imports(path):
            lines = lines_of.setdefault(path, path.read_text().splitlines())
            previous = lines[lineno - 2].strip()
            # A comment on the line, or just above it (a group of imports shares the comment above the first).
            explained = "#" in text or previous.startswith("#") or previous.startswith(("import ", "from "))
            if not explained:
                unexplained.append(f"{path.relative_to(REPO)}:{lineno}: {text.strip()}")
    assert not unexplained, "imports inside functions need a comment saying why:\n" + "\n".join(unexplained)
