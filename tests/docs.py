"""Checks of the Markdown docs against the code: the `python -m` commands they show, and their relative links.

A command's module is looked up when it is checked (importlib's finders, nothing imported but parent packages), so
a module added later is found. Its flags are read from its source, not by importing it: trainer.export and
trainer.report define theirs under `if __name__ == "__main__":` (trainer.main's --model_dir would clash at import),
and reading needs no TensorFlow. The flags a command may use are those its module and the project modules it
imports define with a literal name, plus absl's own (--verbosity, --helpshort, ...).
"""

import ast
import difflib
import functools
import importlib.util
import os
import re
from typing import Iterator

from absl import app, flags  # (app imports absl.logging, which defines --verbosity and the other logging flags)

from tests.processes import REPO

# Commands of these modules hand everything after a lone `--` to another module (launch.local starts trainer.main).
FORWARDS = {"launch.local": "trainer.main"}
_COMMAND = re.compile(r"\bpython3?(?:\.\d+)? -m ([A-Za-z_][\w.]*\w)")
_COMMAND_END = re.compile(r"&&|\|\||;|\s\|\s|\s#|\s\d?>")  # where the shell, or a comment, takes over
_FLAG = re.compile(r"^\[?--([A-Za-z][\w-]*)(?:=(\S*))?")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
  """(first line number, line) with shell continuations (a trailing backslash) joined."""
  pending, start = "", 0
  for number, line in enumerate(text.splitlines(), 1):
    if not pending:
      start = number
    if line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
    else:
      yield start, pending + line
      pending = ""
  if pending:
    yield start, pending


def commands(text: str) -> Iterator[tuple[int, str, list[str]]]:
  """(line, module, argument tokens) of every `python -m module ...` in `text`, in a code span, block or prose: a
  command ends with its code span, its line (continuations joined), or where the shell or a comment takes over."""
  for number, line in _logical_lines(text):
    for segment in line.split("`"):
      for match in _COMMAND.finditer(segment):
        rest = segment[match.end():]
        end = _COMMAND_END.search(rest)
        yield number, match.group(1), (rest[:end.start()] if end else rest).split()


@functools.lru_cache(maxsize=None)
def _source(module: str, root: str, program: bool = False) -> str | None:
  """The file `import module` loads (`program`: that `python -m module` runs), if it is under `root` (a project
  module); '' for a module found elsewhere (pytest, venv); None when there is no such module."""
  importlib.invalidate_caches()
  try:
    spec = importlib.util.find_spec(module)
    if program and spec is not None and spec.submodule_search_locations is not None:  # a package runs __main__
      spec = importlib.util.find_spec(f"{module}.__main__")
  except ImportError:
    return None
  if spec is None:
    return None
  if not spec.has_location:  # built-in or frozen (os, sys)
    return ""
  inside = os.path.realpath(spec.origin).startswith(os.path.join(os.path.realpath(root), ""))
  return spec.origin if inside and ".venv" not in os.path.relpath(spec.origin, root).split(os.sep) else ""


def _is_main_block(node: ast.AST) -> bool:
  return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def _module_level(tree: ast.Module, as_main: bool) -> Iterator[ast.AST]:
  """The nodes that run when the module is loaded (`as_main`: run as the program): all but the bodies of functions
  and classes, and but the `if __name__ == "__main__":` block of an imported module."""
  stack = list(tree.body)
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) or (
        not as_main and _is_main_block(node)):
      continue
    yield node
    stack.extend(ast.iter_child_nodes(node))


def _flag_names(call: ast.Call, loops: dict[str, list[str]], where: str) -> list[str]:
  name = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
  if isinstance(name, ast.Constant) and isinstance(name.value, str):
    return [name.value]
  if isinstance(name, ast.Name) and name.id in loops:  # {f: DEFINE_integer(f, ...) for f in ("a", "b")}
    return loops[name.id]
  raise ValueError(f"{where}:{call.lineno}: a flag whose name is not a literal; tests/docs.py cannot read it")


def _defined(path: str, root: str) -> tuple[set[str], set[str]]:
  """(flags, boolean flags) defined by the module at `path` and the project modules it imports, as a program."""
  names, booleans = set(), set()
  todo, seen = [path], {path}
  while todo:
    current = todo.pop()
    more, more_booleans, imported = _read_module(current, root, as_main=current == path)
    names |= more
    booleans |= more_booleans
    for module in imported:
      source = _source(module, root)
      if source and source not in seen:
        seen.add(source)
        todo.append(source)
  return names, booleans


@functools.lru_cache(maxsize=None)
def _read_module(path: str, root: str, as_main: bool) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
  """(flags, boolean flags, imported modules) of one module's code that runs when it is imported, or run."""
  tree = ast.parse(_read(path), path)
  loops = {}  # comprehension variables over literal tuples or lists
  for node in ast.walk(tree):
    if isinstance(node, ast.comprehension) and isinstance(node.target, ast.Name) and isinstance(
        node.iter, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.iter.elts):
      loops[node.target.id] = [e.value for e in node.iter.elts]
  names, booleans, imported = set(), set(), []
  for node in _module_level(tree, as_main):
    func = getattr(node, "func", None)
    called = getattr(func, "attr", getattr(func, "id", ""))
    if isinstance(node, ast.Call) and called.startswith("DEFINE"):
      found = _flag_names(node, loops, os.path.relpath(path, root))
      names.update(found)
      if called in ("DEFINE_bool", "DEFINE_boolean"):
        booleans.update(found)
    imported += _imports(node)
  return frozenset(names), frozenset(booleans), tuple(imported)


def _imports(node: ast.AST) -> list[str]:
  """The modules an import statement loads: `from a import b` may load a.b (a module) or only a (a name in it)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  if isinstance(node, ast.ImportFrom) and node.module and not node.level:
    return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
  return []


@functools.lru_cache(maxsize=1)
def _absl_flags() -> tuple[frozenset[str], frozenset[str]]:
  """The flags every absl program takes (app.run defines the help flags when it starts)."""
  app.define_help_flags()
  own = [f for module, defined in flags.FLAGS.flags_by_module_dict().items() if module in ("absl.app", "absl.logging")
         for f in defined]
  names = {n for f in own for n in (f.name, f.short_name) if n} | {"flagfile", "undefok"}
  return frozenset(names), frozenset(f.name for f in own if f.boolean)


def accepted_flags(module: str, root: str = REPO) -> frozenset[str] | None:
  """Every `--name` that `python -m module` accepts, `--noname` for a boolean included; None for a module of
  another project (not checked)."""
  source = _source(module, root, program=True)
  if not source:
    return None
  names, booleans = _defined(source, root)
  absl_names, absl_booleans = _absl_flags()
  return names | absl_names | {f"no{b}" for b in booleans | absl_booleans}


def _names_a_project_file(token: str, path: str, root: str) -> bool:
  """Whether `--gin_file=path` names a file of the project, which must then exist. Not: `[--gin_file=more.gin ...]`
  (an optional argument in a usage line) and `configs/X.gin` show the syntax; `mine.gin` (in no folder of the
  project) is a user's own file."""
  stem = os.path.splitext(os.path.basename(path))[0]
  in_project = os.path.isdir(os.path.join(root, os.path.dirname(path))) and os.path.dirname(path) not in ("", ".")
  return in_project and not token.startswith("[") and not stem.isupper()


def _check_arguments(module: str, tokens: list[str], root: str) -> Iterator[str]:
  accepted = accepted_flags(module, root)
  for i, token in enumerate(tokens):
    if token == "--":
      if module in FORWARDS:
        yield from _check_arguments(FORWARDS[module], tokens[i + 1:], root)
      return
    flag = _FLAG.match(token)
    if not flag:
      continue
    name, value = flag.group(1), (flag.group(2) or "").strip("'\"]")
    if accepted is not None and name not in accepted:
      close = difflib.get_close_matches(name, sorted(accepted), n=1)
      yield f"python -m {module} has no flag --{name}" + (f" (did you mean --{close[0]}?)" if close else "")
    if name == "gin_file" and _names_a_project_file(token, value, root) and not os.path.isfile(
        os.path.join(root, value)):
      yield f"--gin_file={value}: no such file"


def command_problems(text: str, root: str = REPO) -> list[str]:
  """'line N: problem' for each command in `text` whose module, flags or gin files do not exist."""
  problems = []
  for number, module, tokens in commands(text):
    if _source(module, root, program=True) is None:
      problems.append(f"line {number}: python -m {module}: no such module")
      continue
    problems += [f"line {number}: {p}" for p in _check_arguments(module, tokens, root)]
  return problems


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: its text, lower case, without punctuation, spaces as hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
  """The anchors of a Markdown text's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
  seen: dict[str, int] = {}
  found = set()
  for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _without_fences(text), flags=re.M):
    slug = _slug(heading)
    found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
    seen[slug] = seen.get(slug, 0) + 1
  return found


def _without_fences(text: str) -> str:
  return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _without_code(text: str) -> str:
  """`text` without fenced code blocks and code spans, where brackets and #s are not Markdown."""
  return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def link_problems(text: str, directory: str) -> list[str]:
  """One line for each relative link (or image) in `text`, a file in `directory`, to a file or anchor that is not
  there. Links with a scheme (https:, mailto:) are not followed."""
  problems = []
  for target in _LINK.findall(_without_code(text)):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
      continue
    path, _, anchor = target.partition("#")
    file = os.path.normpath(os.path.join(directory, path)) if path else None
    if file and not os.path.exists(file):
      problems.append(f"link to {target}: no such file")
    elif anchor and (file is None or file.endswith(".md")) and anchor not in anchors(_read(file) if file else text):
      problems.append(f"link to {target}: no heading with that anchor")
  return problems


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()
