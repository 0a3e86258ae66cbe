"""The layering of the tree (docs/architecture.md): the library stands alone, the zoo and the data layer never
import the scripts' layer, and no module of the project imports another in a cycle."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = {"train", "calculate_score", "mislabel_analysis", "args", "utils", "datasets", "noise", "imagefolder",
       "models"}
SCRIPTS = {"train", "calculate_score", "mislabel_analysis", "args", "utils"}


def _modules():
    """{module name: path} of the project's own modules (top level, models/, tracin/)."""
    out = {name: os.path.join(ROOT, name + ".py") for name in TOP - {"models"}}
    for pkg in ("models", "tracin"):
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                out[pkg + ("" if f == "__init__.py" else "." + f[:-3])] = os.path.join(ROOT, pkg, f)
    return out


def _imports(name, path):
    """Project modules that `name` imports anywhere in its body (function-level imports count too)."""
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    # a submodule's `from . import x` loads x, not its own package's __init__ (already being imported)
    return {m for m in found if m.split(".")[0] in TOP | {"tracin"} and m != name.split(".")[0]}


def _graph():
    mods = _modules()
    return {n: {m for m in _imports(n, p) if m in mods and m != n} for n, p in mods.items()}


def test_the_library_imports_nothing_of_the_top_level():
    offenders = {n: sorted(d for d in deps if d.split(".")[0] in TOP)
                 for n, deps in _graph().items() if n.startswith("tracin")}
    assert {n: d for n, d in offenders.items() if d} == {}


def test_zoo_and_data_never_import_the_scripts_layer():
    graph = _graph()
    for n, deps in graph.items():
        if n.split(".")[0] in TOP - SCRIPTS:
            assert not {d for d in deps if d.split(".")[0] in SCRIPTS}, n


def test_no_import_cycle_between_modules():
    graph = _graph()
    state = {}

    def visit(n, path):
        state[n] = "open"
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                raise AssertionError(" -> ".join(path + [n, d]))
            if d not in state:
                visit(d, path + [n])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_the_checker_sees_a_planted_arrow(tmp_path):
    """The walk above must catch a tracin module importing the zoo, however it is spelled."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    import models\n    from datasets import load_arrays\n")
    assert _imports("tracin.planted", str(planted)) == {"models", "datasets", "datasets.load_arrays"}
