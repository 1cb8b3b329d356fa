"""Trained models for use outside trainer: model_dir/export/<name>.keras and a TF SavedModel model_dir/export/<name>/.

Written by the chief after the last update (trainer.actions.Export) and on demand from the latest checkpoint:

    python -m trainer.export --model_dir=DIR [--model=NAME]

which rebuilds the models from DIR/operative_config.gin (so a user's own module must be importable, as for
training). A model whose optimizer keeps a moving average (`use_ema`) is written with the averaged weights, the ones
evaluation uses. Each model is first copied out of the strategy (its variables on the host, no mirroring) with
trainer's Dropout replaced by Keras's (they differ only in training), so plain Keras loads the file without
importing trainer. The SavedModel's `serve` endpoint is also its `serving_default` signature.

Atomic: everything is written to a new directory beside export/, which then replaces it by two renames (old
aside, new in place, old removed), so a failed or interrupted export never replaces a good one. Were the process
killed between the renames, the previous export is still whole, as export.old-*.
"""

import os
import shutil
import uuid
from typing import Iterable, Mapping

from trainer import console

if __name__ == "__main__":  # `python -m trainer.export`: TensorFlow starts as quietly as for trainer.main
  console.import_tensorflow_quietly()

import gin  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from trainer import checkpoints, config, dropout  # noqa: E402
from trainer.errors import UserError, did_you_mean  # noqa: E402
from trainer.state import build  # noqa: E402
from trainer.update import averaged_weights  # noqa: E402

DIRECTORY = "export"


def standalone(model: keras.Model) -> keras.Model:
  """A copy of `model` in plain variables (called outside any strategy scope, as actions are), with
  keras.layers.Dropout for trainer's; `model` itself when Keras cannot clone it (a subclassed model), which then
  loads only where its classes are importable."""
  def plain(layer):
    if isinstance(layer, dropout.Dropout):
      return keras.layers.Dropout.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())
  try:
    copy = keras.models.clone_model(model, clone_function=plain)
  except (ValueError, TypeError, NotImplementedError) as e:
    logging.warning("exporting model '%s' as it is (Keras cannot clone it: %s)", model.name, str(e).splitlines()[0])
    return model
  copy.set_weights(model.get_weights())
  return copy


def write(models: Mapping[str, keras.Model], optimizers: Mapping[str, keras.optimizers.Optimizer],
          model_dir: str, names: Iterable[str] | None = None) -> str:
  """Exports models `names` (default: all) into model_dir/export/ atomically, keeping the other models' files
  already there; returns the directory."""
  final = os.path.join(model_dir, DIRECTORY)
  stage = os.path.join(model_dir, f".{DIRECTORY}-{uuid.uuid4().hex}")
  try:
    if names is not None and os.path.isdir(final):
      shutil.copytree(final, stage)  # the models not asked for stay as they were
    os.makedirs(stage, exist_ok=True)
    with averaged_weights(models, optimizers):
      for name in sorted(models if names is None else names):
        _save(standalone(models[name]), stage, name)
    _replace(stage, final)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  logging.info("exported %s to %s", ", ".join(sorted(models if names is None else names)), final)
  return final


def _save(model: keras.Model, directory: str, name: str) -> None:
  shutil.rmtree(os.path.join(directory, name), ignore_errors=True)  # this model's SavedModel copied from before
  model.save(os.path.join(directory, f"{name}.keras"))
  model.export(os.path.join(directory, name), format="tf_saved_model", verbose=False)


def _replace(stage: str, final: str) -> None:
  """`stage` becomes `final`; a previous `final` is moved aside first and removed only after."""
  old = f"{final}.old-{uuid.uuid4().hex}"
  if os.path.exists(final):
    os.rename(final, old)
  os.rename(stage, final)
  shutil.rmtree(old, ignore_errors=True)


def _configured(parameter: str, default=None):
  """train's `parameter` from the parsed operative config; a configurable reference (`@generator/mlp`) becomes
  the function it names, with its scope's bindings."""
  try:
    value = gin.query_parameter(f"train.{parameter}")
  except ValueError:
    return default
  resolve = lambda v: v.scoped_configurable_fn if isinstance(v, gin.config.ConfigurableReference) else v
  return {k: resolve(v) for k, v in value.items()} if isinstance(value, dict) else resolve(value)


def from_checkpoint(model_dir: str, model: str | None = None) -> str:
  """Rebuilds the run's models from model_dir/operative_config.gin, restores the latest checkpoint and exports
  `model` (default: every model). Raises UserError, in one line, when the run or the model is not there."""
  operative = os.path.join(model_dir, "operative_config.gin")
  if not os.path.exists(operative):
    raise UserError(f"{operative} not found: give the --model_dir of a run trainer.main wrote")
  config.parse([operative], [])
  factories = _configured("models", {})
  if model is not None and model not in factories:
    raise UserError(f"--model={model} is not a model of this run ({', '.join(sorted(factories))})"
                    f"{did_you_mean(model, factories)}")
  state = build(tf.distribute.get_strategy(), factories, _configured("optimizers", {}),
                      _configured("seed", 0), _configured("precision", "float32"))
  directory = os.path.join(model_dir, "checkpoints")
  # The manager is only read from (its checkpoint object names what to restore); nothing is saved or deleted.
  manager = checkpoints.make_manager(directory, state.models, state.optimizers, state.counters, max_to_keep=None)
  if checkpoints.restore_latest(manager.checkpoint, directory) is None:
    raise UserError(f"no checkpoint in {directory}: train first (python -m trainer.main ... --model_dir={model_dir})")
  return write(state.models, state.optimizers, model_dir, None if model is None else [model])


def main(argv: list[str]) -> None:
  try:
    with console.exit_on_stop():
      if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
      print(from_checkpoint(flags.FLAGS.model_dir, flags.FLAGS.model))
  finally:
    gin.clear_config()


if __name__ == "__main__":
  # Defined here, not at import: trainer.main defines its own --model_dir, and tests import both modules.
  flags.DEFINE_string("model_dir", None, "The run's directory (holds operative_config.gin and checkpoints/).")
  flags.DEFINE_string("model", None, "The model to export (default: every model of the run).")
  flags.mark_flag_as_required("model_dir")
  app.run(main, flags_parser=console.parse_flags)
