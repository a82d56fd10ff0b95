"""The layers' import rules, read from the source with ast: the training core, the model and the
data sets import nothing from tools/; exact search (tools/knn) sits below re-ranking (tools/rerank),
which sits below the benchmark-neutral evaluation (tools/retrieval); that imports no benchmark or
pictures; no benchmark names another, and no code outside a benchmark's package names its context
class or its name constant."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULES = [
    # (packages whose modules are checked, forbidden import prefixes)
    (("core", "modeling", "datasets"), ("tools",)),
    (("tools/retrieval",), ("tools.revisitop", "tools.gldv2", "tools.evaluation", "tools.vis")),
    # exact search, then re-ranking, then benchmark-neutral evaluation (tools/retrieval) on top
    (("tools/knn",), ("tools.rerank", "tools.retrieval", "tools.evaluation", "tools.revisitop")),
    (("tools/rerank",), ("tools.retrieval", "tools.evaluation", "tools.revisitop", "tools.gldv2")),
    # benchmarks: none names another; the methods and the extraction name none
    (("tools/revisitop",), ("tools.gldv2",)),
    (("tools/gldv2",), ("tools.revisitop",)),
    (("tools/evaluation/methods", "tools/extraction"), ("tools.revisitop", "tools.gldv2")),
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


def identifiers(path):
    """Every name a file's code uses: names, attributes and imported names (not its text)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            found.update(alias.asname or alias.name.split(".")[-1] for alias in node.names)
    return found


def benchmark_identifiers():
    """{package folder of a registered benchmark: its context class's name and the module constants
    holding its registered name (GLDV2 = "gldv2")}."""
    import sys

    from tools.evaluation.benchmarks import BENCHMARKS

    owned = {}
    for name, context_class in BENCHMARKS.entries():
        module = sys.modules[context_class.__module__]
        constants = {key for key, value in vars(module).items() if key.isupper() and value == name}
        folder = context_class.__module__.rsplit(".", 1)[0].replace(".", "/")
        owned[folder] = {context_class.__name__} | constants
    return owned


def test_no_code_outside_a_benchmark_names_it():
    """No `isinstance(context, RevisitopContext)` or `== GLDV2` outside the benchmark's own package:
    other code reaches a benchmark through the catalog (tools/evaluation/benchmarks.py) and the
    context interface."""
    owned = benchmark_identifiers()
    assert {"tools/revisitop", "tools/gldv2"} <= set(owned)
    found = []
    for package in ("core", "modeling", "datasets", "tools"):
        for path in sorted((REPO / package).rglob("*.py")):
            used = identifiers(path)
            for folder, names in owned.items():
                if not path.is_relative_to(REPO / folder) and used & names:
                    found.append(f"{path.relative_to(REPO)} names {sorted(used & names)}")
    assert found == []
