"""The code keeps the shape the team agreed on (issue 19), checked on the source with ``ast``:

- no function or method in ``app/`` is longer than :data:`MAX_FUNCTION_LINES` lines, counted from
  its ``def`` line to its last line, docstring included (``end_lineno - lineno + 1``): a longer one
  reads as a sequence of named steps instead;
- no runner module imports another runner (what they share lives in ``pytrain.runners.base``).

Pure source reading: well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
RUNNERS = APP / "pytrain" / "runners"
#: The most lines a function may span (the team's rule: "functions at most ~60 lines, named steps").
MAX_FUNCTION_LINES = 60
#: The runner modules: each implements :class:`pytrain.runners.base.Runner` for one kind of run.
RUNNER_MODULES = ("local", "docker", "slurm", "ray")


def _modules(root: Path) -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))) for path in sorted(root.rglob("*.py"))]


def _long_functions(root: Path, limit: int) -> list[str]:
    """``"<path>:<line> <name> (<n> lines)"`` of every function in ``root`` longer than ``limit`` lines."""
    found = []
    for path, tree in _modules(root):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def _imported_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_function_in_app_is_longer_than_60_lines():
    long = _long_functions(APP, MAX_FUNCTION_LINES)
    assert long == [], f"split these into named steps of at most {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_length_check_finds_a_long_function(tmp_path):
    """The check above can fail: a 61-line function is found, a 60-line one is not."""
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (tmp_path / "short.py").write_text(f"def short():\n{body}")
    (tmp_path / "long.py").write_text(f"def long():\n{body}    x = 0\n")
    assert _long_functions(tmp_path, MAX_FUNCTION_LINES) == [f"{tmp_path.name}/long.py:1 long (61 lines)"]


def test_no_runner_imports_another_runner():
    others = {
        path.stem: sorted(name for name in _imported_modules(tree)
                          if any(name == f"pytrain.runners.{runner}" or name.startswith(f"pytrain.runners.{runner}.")
                                 for runner in RUNNER_MODULES if runner != path.stem))
        for path, tree in _modules(RUNNERS) if path.stem in RUNNER_MODULES
    }
    assert set(others) == set(RUNNER_MODULES)
    assert others == {runner: [] for runner in RUNNER_MODULES}, "move what runners share into pytrain.runners.base"
