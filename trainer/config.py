"""Gin at the edge: what configs may name, parsing files and bindings with clear errors, the operative config.

Configs name functions by their short names (`@mlp`, `@Schedule()`, `@generator/Adam`). A gin file imports the
modules whose configurables it uses (`import trainer.tasks.gan`, or a user's `import my_models`), so one can grep
from a config to its code and a user's module works exactly like ours. Keras classes are registered here
explicitly, because `import gin.tf` is broken on TF 2.21 (it needs tf.estimator).
"""

import inspect
import os
import re
from typing import Sequence

import gin
import keras

from trainer.errors import UserError, did_you_mean

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
gin.add_config_file_search_path(_REPO)  # so that `include 'configs/x.gin'` works from any directory

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
  package = os.path.join(_REPO, "trainer")
  for folder in (package, os.path.join(package, "tasks")):
    for file in sorted(os.listdir(folder)):
      if file.endswith(".py"):
        with open(os.path.join(folder, file), encoding="utf-8") as f:
          if re.search(rf"^(def|class) {re.escape(name)}\b", f.read(), flags=re.M):
            module = os.path.relpath(os.path.join(folder, file[:-3]), _REPO).replace(os.sep, ".")
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


def _resolve(path: str) -> str:
  for candidate in (path, os.path.join(_REPO, path)):
    if os.path.isfile(candidate):
      return candidate
  hint = ""
  configs = os.path.join(_REPO, "configs")
  if os.path.isdir(configs):
    hint = did_you_mean(os.path.basename(path), os.listdir(configs))
    hint = hint.replace("'", "'configs/", 1) if hint else f"; the shipped configs are in {configs}"
  raise UserError(f"gin file not found: {path}{hint}")


def parse(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin `files` then `bindings` (bindings win). Raises UserError with one clear line on any mistake."""
  resolved = [_resolve(f) for f in files]
  try:
    gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
  except (ValueError, SyntaxError, KeyError, TypeError, ImportError) as e:
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
