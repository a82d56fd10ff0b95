"""No function of the repository is over 50 lines, counted from its ``def`` line to its last line
(docstring included; decorators not): every Python file except .venv, output and the top-level data
folder. ruff's PLR0915 (max-statements 50, pyproject.toml) counts statements; this counts lines."""

import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 50
SKIPPED_FOLDERS = {".git", ".venv", "output", "__pycache__", ".pytest_cache", ".ruff_cache"}
SKIPPED_AT_ROOT = {"data"}


def python_files(root):
    """Every .py file under root, in a stable order, without the skipped folders."""
    for folder, subfolders, files in os.walk(root):
        skipped = SKIPPED_FOLDERS | (SKIPPED_AT_ROOT if Path(folder) == Path(root) else set())
        subfolders[:] = sorted(name for name in subfolders if name not in skipped)
        yield from (Path(folder) / name for name in sorted(files) if name.endswith(".py"))


def long_functions(root, max_lines=MAX_LINES):
    """'path:line name (N lines)' of every function or method over max_lines lines."""
    found = []
    for path in python_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    where = path.relative_to(root).as_posix()
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_50_lines():
    found = long_functions(REPO)
    assert not found, "functions over 50 lines (split them):\n" + "\n".join(found)


def _function(name, lines, decorator=""):
    """Source of a function `lines` lines long from its def line, docstring included."""
    body = [f"    value_{index} = {index}" for index in range(lines - 2)]
    return f'{decorator}def {name}():\n    """Docstring."""\n' + "\n".join(body) + "\n\n\n"


def test_the_checker_names_a_51_line_function_and_skips_what_is_not_the_repository(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    source = _function("fits", 50) + "class Holder:\n" + "".join(
        "    " + line + "\n" for line in _function("too_long", 51, "@staticmethod\n").splitlines()
    )
    (package / "module.py").write_text("import os\n\n\n" + source)
    for skipped in (".venv/lib", "output", "data", "pkg/__pycache__"):
        (tmp_path / skipped).mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped / "long.py").write_text(_function("ignored", 80))
    (package / "data").mkdir()  # a data folder inside a package is code
    (package / "data" / "long.py").write_text(_function("inside_a_package", 52))
    assert long_functions(tmp_path) == [
        "pkg/module.py:58 too_long (51 lines)",  # its def line, after the decorator
        "pkg/data/long.py:1 inside_a_package (52 lines)",
    ]
