"""The code's shape, as the developers' guide asks it: folders import one way, functions and classes stay short."""

import ast

from conftest import ROOT

PACKAGE = ROOT / "denetdm"
SOURCES = [*PACKAGE.rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py"), ROOT / "run.py", ROOT / "sweep.py"]
MAX_FUNCTION, MAX_CLASS = 40, 130  # lines, decorators aside


def _node(module: str) -> str:
    """A module's place in the import graph: its folder of denetdm (`training`), or itself where it sits at the top
    (`denetdm.errors`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else module


def _runtime_imports(tree: ast.Module) -> list[str]:
    """The denetdm modules a file imports when it runs (those under `if TYPE_CHECKING:` are for annotations)."""
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("denetdm."):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("denetdm.")]
    return out


def folder_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) folder pairs of the package, with the files that make each."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        here = _node(".".join(rel.parts))
        for module in _runtime_imports(ast.parse(path.read_text())):
            if (there := _node(module)) != here:
                edges.setdefault((here, there), []).append(str(rel))
    return edges


def test_no_two_folders_import_each_other():
    edges = folder_edges()
    ties = [f"{a} <-> {b} ({edges[a, b][0]}, {edges[b, a][0]})" for a, b in edges if (b, a) in edges and a < b]
    assert not ties, "folders that import each other: " + "; ".join(ties)


def test_the_graph_sees_an_import_made_inside_a_function():
    tree = ast.parse("def f():\n    from denetdm.sweeps.pruning import Reporter\n")
    assert _runtime_imports(tree) == ["denetdm.sweeps.pruning"]
    typed = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from denetdm.training.loop import Fit\n"
    )
    assert _runtime_imports(typed) == []


def test_no_function_over_40_lines_and_no_class_over_130():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if (n := node.end_lineno - node.lineno + 1) > limit:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "over the length limits: " + ", ".join(long)
