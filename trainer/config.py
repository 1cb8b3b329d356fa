"""Gin at the edge: what configs may name, parsing files and bindings with clear errors, the operative config.

Configs name functions by their short names (`@mlp`, `@Schedule()`, `@generator/Adam`). A gin file imports the
modules whose configurables it uses (`import trainer.tasks.gan`, or a user's `import my_models`), so one can grep
from a config to its code and a user's module works exactly like ours. Keras classes are registered here
explicitly, because `import gin.tf` is broken on TF 2.21 (it needs tf.estimator).
"""

import importlib.util
import inspect
import os
import re
from typing import IO, Sequence

import gin
import gin.resource_reader
import keras

from trainer.errors import UserError, did_you_mean

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _config_root() -> str:
  """The directory that holds trainer's `configs/`: the package itself when installed (pyproject.toml puts the
  configs there), the checkout around the package otherwise (`pip install -e .` included)."""
  for root in (_PACKAGE, os.path.dirname(_PACKAGE)):
    if os.path.isdir(os.path.join(root, "configs")):
      return root
  return os.path.dirname(_PACKAGE)


# `--gin_file=configs/x.gin` and `include 'configs/x.gin'` name the shipped configs relative to this, from any
# directory, in a checkout and installed alike.
CONFIG_ROOT = _config_root()


def _is_shipped(path: str) -> bool:
  return not os.path.isabs(path) and os.path.isfile(os.path.join(CONFIG_ROOT, path))


def _open_shipped(path: str) -> IO[str]:
  return open(os.path.join(CONFIG_ROOT, path), encoding="utf-8")


def _in_a_package(path: str) -> bool:
  """gin's check for an include naming a file in an importable package ('package/x.gin'), without its two faults:
  it crashes (TypeError) on a namespace package, which has no file to place it, e.g. the checkout's configs/ when
  the checkout is on sys.path; and it logs an error for every path it does not find, found elsewhere or not."""
  head, name = os.path.split(path)
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError):
    return False
  return bool(spec and spec.origin) and os.path.isfile(os.path.join(os.path.dirname(spec.origin), name))


def _use_trainers_file_readers() -> None:
  """Where gin looks for a relative config path, in this order: the working directory, trainer's configs, files in
  importable packages. gin tries its package reader for every path before any search path, so trainer's configs
  go into its list of readers (a private list: gin offers only appending to it) rather than its search path."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  package_reader = gin.resource_reader.system_path_reader
  others = [r for r in readers if r[0] not in (open, _open_shipped, package_reader)]
  readers[:] = [(open, os.path.isfile), (_open_shipped, _is_shipped), (package_reader, _in_a_package), *others]


_use_trainers_file_readers()

for _cls in (keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.SGD, keras.optimizers.RMSprop):
  gin.external_configurable(_cls, module="keras.optimizers")
# A Keras learning-rate schedule is evaluated at its optimizer's own iteration count, i.e. it advances once per
# update of *that* model, never per micro-batch.
for _cls in (keras.optimizers.schedules.ExponentialDecay, keras.optimizers.schedules.CosineDecay,
             keras.optimizers.schedules.PiecewiseConstantDecay):
  gin.external_configurable(_cls, module="keras.optimizers.schedules")


def _configurable_names() -> list[str]:
  names = set()
  for selector, _ in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    names.update({selector, selector.split(".")[-1]})
  return sorted(names)


def _parameter_names(configurable: str) -> list[str]:
  entry = gin.config._REGISTRY.get_match(configurable)  # pylint: disable=protected-access
  if entry is None:
    return []
  fn = entry.wrapped.__init__ if inspect.isclass(entry.wrapped) else entry.wrapped
  return [p for p in inspect.signature(fn).parameters if p != "self"]


def _import_hint(name: str) -> str:
  """Names the trainer module that defines configurable `name`, for a gin file that forgot to import it."""
  for folder in (_PACKAGE, os.path.join(_PACKAGE, "tasks")):
    for file in sorted(os.listdir(folder)):
      if file.endswith(".py"):
        with open(os.path.join(folder, file), encoding="utf-8") as f:
          if re.search(rf"^(def|class) {re.escape(name)}\b", f.read(), flags=re.M):
            module = os.path.relpath(os.path.join(folder, file[:-3]), os.path.dirname(_PACKAGE)).replace(os.sep, ".")
            return f" (it is in {module}: add `import {module}` to the gin file)"
  return " (is the module that defines it imported at the top of the gin file?)"


def explain(error: Exception) -> str:
  """One line saying what is wrong in a gin config, and how to fix it when that can be guessed."""
  message = str(error)
  where = re.search(r"In (?:file \"([^\"]+)\", line (\d+)|bindings string line (\d+))\n\s*(.*)", message)
  location = ""
  if where:
    file, line, binding_line, text = where.groups()
    location = f" ({file}:{line}: {text.strip()})" if file else f" (--gin_bindings: {text.strip()})"
  if m := re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", message):
    name = m.group(1).split("/")[-1]
    close = did_you_mean(name, _configurable_names())
    return f"no configurable named '{name}'{close or _import_hint(name)}{location}"
  if m := re.search(r"Unable to open file: (.+?)\. Searched config paths", message):  # an include's file
    return f"gin file not found: {m.group(1)}{location}{_shipped_hint(m.group(1))}"
  if isinstance(error, ImportError):
    return f"{message.splitlines()[0]}{location}; fix the module name, or put its directory on PYTHONPATH"
  if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
    name, parameter = m.groups()
    return (f"'{name}' has no parameter '{parameter}'{did_you_mean(parameter, _parameter_names(name))}"
            f"{location}")
  if m := re.search(r"No bindings specified for '([\w.]+)/gin.macro'", message):
    return f"macro %{m.group(1)} is used but never defined; add '{m.group(1)} = <value>' to the config"
  if m := re.search(r"Required bindings for `(\w+)` not provided in config: \[(.*)\]", message):
    missing = ", ".join(f"{m.group(1)}.{p.strip()}" for p in m.group(2).replace("'", "").split(","))
    return f"the config does not set {missing}"
  return f"{message.strip().splitlines()[0]}{location}"


def _shipped_hint(path: str) -> str:
  """'; did you mean 'configs/x.gin'?' for a misspelt shipped config, else where the shipped configs are."""
  configs = os.path.join(CONFIG_ROOT, "configs")
  if not os.path.isdir(configs):
    return ""
  hint = did_you_mean(os.path.basename(path), os.listdir(configs))
  return hint.replace("'", "'configs/", 1) if hint else f"; the shipped configs are in {configs}"


def _resolve(path: str) -> str:
  for candidate in (path, os.path.join(CONFIG_ROOT, path)):
    if os.path.isfile(candidate):
      return candidate
  raise UserError(f"gin file not found: {path}{_shipped_hint(path)}")


def parse(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin `files` then `bindings` (bindings win). Raises UserError with one clear line on any mistake."""
  resolved = [_resolve(f) for f in files]
  try:
    gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
  except (ValueError, SyntaxError, KeyError, TypeError, ImportError, OSError) as e:  # OSError: an include's file
    raise UserError(f"bad gin config: {explain(e)}") from e


RUN_CONFIG = "config.gin"


def write_operative_config(model_dir: str) -> None:
  """Writes the configuration actually used (gin's operative config: every parameter of what has been called,
  defaults included) to model_dir/operative_config.gin, and every binding the run was given (files and
  --gin_bindings, including those of what runs later, such as evaluations) to model_dir/config.gin, from which
  `python -m trainer.evaluate` rebuilds the run."""
  for name, text in (("operative_config.gin", gin.operative_config_str()), (RUN_CONFIG, gin.config_str())):
    with open(os.path.join(model_dir, name), "w", encoding="utf-8") as f:
      f.write(text)
