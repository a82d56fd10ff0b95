"""The layers' import rules, read from the source with ast: the training core, the model and the
data sets import nothing from tools/; the retrieval code imports nothing from the revisitop
benchmark or the pictures."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULES = [
    # (packages whose modules are checked, forbidden import prefixes)
    (("core", "modeling", "datasets"), ("tools",)),
    (("tools/retrieval",), ("tools.revisitop", "tools.vis")),
]


def imported_modules(path, root=REPO):
    """Every module an import statement of the file names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).parent.parts)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def violations(packages, forbidden, root=REPO):
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for name in imported_modules(path, root):
                if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize(("packages", "forbidden"), RULES)
def test_no_import_crosses_a_layer_upwards(packages, forbidden):
    assert violations(packages, forbidden) == []


def test_the_rules_see_imports_of_every_form(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "probe.py").write_text(
        "import os\nimport tools.search\nfrom tools import pipeline\n"
        "from ..tools.vis import ranking\n"
        "def f():\n    from tools.retrieval.methods import METHODS\n"
    )
    found = violations(("core",), ("tools",), root=tmp_path)
    assert "core/probe.py imports tools.search" in found
    assert "core/probe.py imports tools.pipeline" in found
    assert "core/probe.py imports tools.vis.ranking" in found
    assert "core/probe.py imports tools.retrieval.methods.METHODS" in found
    assert not any("imports os" in line for line in found)
