"""Checkpoints under model_dir/checkpoints: every model, every optimizer, and the counters that place the run.

The counters are the global update (which fixes the schedule position) and the global micro-batch (which fixes
the data position; see trainer.data), so a restored run continues exactly where the saved one stopped.
"""

import os
from typing import Mapping

import keras
import tensorflow as tf
from absl import logging

from trainer.errors import UserError


def make_manager(
    directory: str,
    models: Mapping[str, keras.Model],
    optimizers: Mapping[str, keras.optimizers.Optimizer],
    counters: Mapping[str, tf.Variable],
    max_to_keep: int,
) -> tf.train.CheckpointManager:
  """A CheckpointManager over all training state, writing to `directory`."""
  checkpoint = tf.train.Checkpoint(
      **{f"model_{n}": m for n, m in models.items()},
      **{f"optimizer_{n}": o for n, o in optimizers.items()},
      **counters,
  )
  return tf.train.CheckpointManager(
      checkpoint, directory, max_to_keep=max_to_keep, step_counter=counters["update"]
  )


def restore_latest(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
  """Restores the newest checkpoint in `directory`, if any, and returns its path.

  Every worker restores from the chief's directory (a non-chief worker saves to a private one it deletes).
  Raises UserError, naming the files, when the checkpoint is unreadable or does not match the configured models.
  Nothing is deleted: the user decides whether to remove a damaged checkpoint or pick another model_dir.
  """
  state = tf.train.get_checkpoint_state(directory)
  if state is None or not state.model_checkpoint_path:
    return None
  path = state.model_checkpoint_path
  older = [p for p in state.all_model_checkpoint_paths if p != path]
  fallback = f"; the previous one, {os.path.basename(older[-1])}, is then used" if older else ""
  try:
    checkpoint.restore(path).assert_existing_objects_matched()
  except Exception as e:  # pylint: disable=broad-except  (the reader raises OpError, IndexError, ValueError, ...)
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(
        f"cannot restore checkpoint {path} ({type(e).__name__}: {reason}). If it is damaged, delete its files "
        f"({os.path.basename(path)}.*) and the 'checkpoint' index entry{fallback}; if the models or optimizers "
        "changed since it was written, use a new --model_dir"
    ) from e
  logging.info("restored %s", path)
  return path


def save(manager: tf.train.CheckpointManager, checkpoint_number: int, check_interval: bool = True) -> str | None:
  """Saves a checkpoint numbered `checkpoint_number`; returns its path (None when the manager skipped it)."""
  return manager.save(checkpoint_number=checkpoint_number, check_interval=check_interval)
