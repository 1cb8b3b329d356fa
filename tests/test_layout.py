"""The package's architecture as the README's layout states it: the import graph and the size of functions."""

import ast
import glob
import os

from tests.processes import REPO


def _modules() -> dict[str, ast.Module]:
  paths = glob.glob(os.path.join(REPO, "trainer", "**", "*.py"), recursive=True)
  names = {p: os.path.relpath(p, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__") for p in paths}
  return {names[p]: ast.parse(open(p, encoding="utf-8").read()) for p in paths}


def _imports(tree: ast.Module) -> set[str]:
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
  return found


def test_trainer_imports_neither_the_launchers_nor_the_benchmark():
  for name, tree in _modules().items():
    assert not {i for i in _imports(tree) if i.split(".")[0] in ("launch", "benchmarks", "tests")}, name


def test_the_core_never_imports_the_tasks_and_the_graph_has_no_cycle():
  modules = _modules()
  graph = {name: {i for i in _imports(tree) if i in modules and i != name} for name, tree in modules.items()}
  for name, edges in graph.items():
    if not name.startswith("trainer.tasks"):
      assert not {e for e in edges if e.startswith("trainer.tasks")}, name
  state: dict[str, str] = {}

  def visit(name, path):
    assert state.get(name) != "open", f"import cycle: {' -> '.join([*path, name])}"
    if name not in state:
      state[name] = "open"
      for edge in graph[name]:
        visit(edge, [*path, name])
      state[name] = "done"

  for name in graph:
    visit(name, [])


def _body_lines(node: ast.FunctionDef) -> int:
  """Lines of a function's body, its docstring left out."""
  documented = isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
  body = node.body[1:] if documented else node.body
  return node.end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_body_in_the_package_is_longer_than_60_lines_and_train_reads_in_50():
  for name, tree in _modules().items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        limit = 50 if (name, node.name) == ("trainer.train", "train") else 60
        assert _body_lines(node) <= limit, f"{name}.{node.name}: {_body_lines(node)} lines"
