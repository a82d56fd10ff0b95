"""The layers' import rules, read from the source with ast: the training core, the model and the
data sets import nothing from tools/; exact search (tools/knn) sits below re-ranking (tools/rerank),
which sits below the benchmark-neutral evaluation (tools/retrieval); that imports no benchmark or
pictures; no benchmark names another, and no code outside a benchmark's package names its context
class or its name constant. Homes: TensorFlow and the official conversion live in
tools/interop/official_tf alone, the synthetic generator is the package datasets/synthetic, and
the training core, model and data sets build their loaders in datasets/loader.py alone."""

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


CONVERSION = "tools/interop/official_tf"
MOVED_AWAY = (  # old homes, now empty: a file written there again would be a second home
    "core/tf_savedmodel.py",
    "core/weights_tf.py",
    "core/weights_slim.py",
    "core/official_convert.py",
    "core/official_yaml.py",
    "core/data.py",
    "datasets/synthetic.py",
    "datasets/synthetic_scenes.py",
    "datasets/synthetic_context.py",
    "datasets/synthetic_render.py",
)


def source_files(root=REPO):
    """The framework's Python files: the packages and the scripts at the top (not the tests)."""
    files = sorted(root.glob("*.py"))
    for package in ("core", "modeling", "datasets", "tools"):
        files += sorted((root / package).rglob("*.py"))
    return files


def conversion_violations(root=REPO):
    """Imports of TensorFlow outside the conversion package, and of the conversion package outside
    itself and its script (tools/convert_official.py)."""
    found = []
    for path in source_files(root):
        if path.is_relative_to(root / CONVERSION):
            continue
        forbidden = ["tensorflow"]
        if path != root / "tools" / "convert_official.py":
            forbidden.append(CONVERSION.replace("/", "."))
        for name in imported_modules(path, root):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_tensorflow_and_the_conversion_stay_in_their_package():
    """The trainer loads a converted .pth like any checkpoint; nothing but the converter reaches
    the TensorFlow reading and mapping code."""
    assert conversion_violations() == []


def test_the_conversion_rule_sees_a_stray_import(tmp_path):
    for folder in ("core", "tools/interop/official_tf"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "core" / "weights.py").write_text(
        "def f():\n    import tensorflow as tf\n"
        "from tools.interop.official_tf.convert import convert_archive\n"
    )
    (tmp_path / "tools" / "convert_official.py").write_text(
        "from tools.interop.official_tf.convert import convert_archive\n"
    )
    (tmp_path / CONVERSION / "savedmodel.py").write_text("import tensorflow\n")
    assert sorted(conversion_violations(tmp_path)) == [
        "core/weights.py imports tensorflow",
        "core/weights.py imports tools.interop.official_tf.convert",
        "core/weights.py imports tools.interop.official_tf.convert.convert_archive",
    ]


def test_each_moved_module_has_one_home():
    assert [path for path in MOVED_AWAY if (REPO / path).exists()] == []
    assert (REPO / "datasets" / "synthetic" / "__init__.py").is_file()
    assert (REPO / CONVERSION / "__init__.py").is_file()


def loader_builders(root=REPO):
    """{file: names of the functions in it that construct a DataLoader} in core, modeling and
    datasets."""
    found = {}
    for package in ("core", "modeling", "datasets"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef):
                    continue
                for call in ast.walk(function):
                    callee = getattr(call, "func", None)
                    name = getattr(callee, "id", None) or getattr(callee, "attr", None)
                    if isinstance(call, ast.Call) and name == "DataLoader":
                        found.setdefault(str(path.relative_to(root)), set()).add(function.name)
    return found


def test_the_training_and_validation_loaders_share_one_file():
    assert loader_builders() == {"datasets/loader.py": {"make_train_loader", "build_val_loader"}}
