"""The package's shape: no import cycle, and one module that names the run folder's files."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_jax"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the mnist_jax modules it imports (at any depth of its code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_jax"):
                for alias in node.names:  # `from mnist_jax import run` imports a module
                    target = f"{node.module}.{alias.name}"
                    deps.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("mnist_jax")}
        graph[name] = {d for d in deps if d != name and d in modules}
    return graph


def test_no_import_cycle():
    graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError on a cycle


def test_analysis_and_evaluate_do_not_import_the_train_loop():
    graph = import_graph()
    assert "mnist_jax.train" not in graph["mnist_jax.analysis"]
    assert "mnist_jax.train" not in graph["mnist_jax.evaluate"]


# Patterns of the run folder's file names, as they appear in string constants (f-string parts too).
RUN_FOLDER_FILES = [r"config\.json", r"classes\.json", r"metrics\.jsonl", r"results\.json",
                    r"predictions\.npz", r"^eval_$|^eval_.*\.json$", r"^selection_", r"^checkpoints$", r"^\.lock$",
                    r"tfevents"]


def test_run_folder_file_names_live_in_runfolder_only():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "runfolder.py":
            continue
        strings = [n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        for pattern in RUN_FOLDER_FILES:
            hits = [s for s in strings if " " not in s and re.search(pattern, s)]  # names, not prose
            assert not hits, f"{path.relative_to(PACKAGE.parent)} names {pattern!r}: {hits}"
