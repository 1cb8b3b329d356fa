"""Checkpoints under model_dir/checkpoints: every model, every optimizer, and the counters that place the run.

The counters are the global update (which fixes the schedule position) and the global micro-batch (which fixes
the data position; see trainer.data), so a restored run continues exactly where the saved one stopped.
"""

import errno
import os
from typing import Mapping

import keras
import tensorflow as tf
from absl import logging

from trainer.errors import UserError

# TensorFlow reports ENOSPC and EDQUOT as ResourceExhaustedError with the C library's text; so does an
# out-of-memory, which is a different fault, hence the match on the text.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = tuple(os.strerror(n) for n in _DISK_FULL_ERRNOS)
# trainer.train gives a non-chief worker a scratch directory of this name (its copy is thrown away).
SCRATCH_PREFIX = "trainer-worker-checkpoints-"


def make_manager(
    directory: str,
    models: Mapping[str, keras.Model],
    optimizers: Mapping[str, keras.optimizers.Optimizer],
    counters: Mapping[str, tf.Variable],
    max_to_keep: int,
) -> tf.train.CheckpointManager:
  """A CheckpointManager over all training state, writing to `directory`."""
  checkpoint = state_checkpoint(models, optimizers, counters)
  return tf.train.CheckpointManager(
      checkpoint, directory, max_to_keep=max_to_keep, step_counter=counters["update"]
  )


def state_checkpoint(models: Mapping[str, keras.Model], optimizers: Mapping[str, keras.optimizers.Optimizer],
                     counters: Mapping[str, tf.Variable]) -> tf.train.Checkpoint:
  """The checkpoint object of the training state, under the names every checkpoint file uses."""
  return tf.train.Checkpoint(**{f"model_{n}": m for n, m in models.items()},
                             **{f"optimizer_{n}": o for n, o in optimizers.items()}, **counters)


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
  return restore(checkpoint, path, fallback)


def restore(checkpoint: tf.train.Checkpoint, path: str, fallback: str = "") -> str:
  """Restores checkpoint `path` (every object of `checkpoint` must be in it; it may hold more) and returns `path`.
  Raises UserError, naming the files, when it is unreadable or does not match; `fallback` ends that message."""
  status = None
  try:
    status = checkpoint.restore(path)
    status.assert_existing_objects_matched()
  except Exception as e:  # pylint: disable=broad-except  (the reader raises OpError, IndexError, ValueError, ...)
    # Else TensorFlow warns of every value it did not restore when the half-restored objects are collected, which
    # is after our one line, at exit.
    if status is not None:
      status.expect_partial()
    tf.get_logger().addFilter(_drop_unrestored_warnings)
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(
        f"cannot restore checkpoint {path} ({type(e).__name__}: {reason}). If it is damaged, delete its files "
        f"({os.path.basename(path)}.*) and the 'checkpoint' index entry{fallback}; if the models or optimizers "
        "changed since it was written, use a new --model_dir"
    ) from e
  # Values in the file that `checkpoint` does not hold are expected (an export or an evaluation needs neither the
  # data fingerprint nor loss scales); else TensorFlow warns of each when the checkpoint object is collected.
  status.expect_partial()
  logging.info("restored %s", path)
  return path


def _drop_unrestored_warnings(record) -> bool:
  """A logging filter: False for TensorFlow's warnings about values a failed restore left unrestored."""
  message = str(record.msg)
  return not (message.startswith("Detecting that an object or model or tf.train.Checkpoint is being deleted")
              or message.startswith("Value in checkpoint could not be found"))


def save(manager: tf.train.CheckpointManager, checkpoint_number: int, check_interval: bool = True) -> str | None:
  """Saves a checkpoint numbered `checkpoint_number`; returns its path (None when the manager skipped it).

  A full disk (or quota) is bad input, not a bug: a restart would fail the same way. It raises UserError (exit 2)
  naming the directory, after removing what TensorFlow's failed write leaves (`ckpt-N_temp/`, an unrecorded
  `ckpt-N.*`, a half-written index file), which would otherwise hold on to the little space left. The `checkpoint`
  index is written last, so it still names the previous checkpoint: that one stays the latest.
  """
  try:
    return manager.save(checkpoint_number=checkpoint_number, check_interval=check_interval)
  except (tf.errors.ResourceExhaustedError, OSError) as e:
    if not is_disk_full(e):
      raise
    _remove_unfinished(manager.directory, f"ckpt-{checkpoint_number}")
    raise UserError(_disk_full_message(manager.directory, checkpoint_number)) from e


def is_disk_full(error: Exception) -> bool:
  """Whether `error` (an OSError or a TensorFlow OpError) says the disk or a quota is full."""
  if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
    return True
  return any(text in str(error) for text in _DISK_FULL_TEXTS)


def _remove_unfinished(directory: str, name: str) -> None:
  """Deletes the debris of a failed save of checkpoint `name`, keeping it if the index already records it."""
  state = tf.train.get_checkpoint_state(directory)
  recorded = state is not None and name in {os.path.basename(p) for p in state.all_model_checkpoint_paths}
  prefix = os.path.join(directory, name)
  debris = [f"{prefix}_temp"] + tf.io.gfile.glob(os.path.join(directory, "checkpoint.tmp*"))
  if not recorded:
    debris += tf.io.gfile.glob(f"{prefix}.index") + tf.io.gfile.glob(f"{prefix}.data-*")
  for path in debris:
    try:
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
      elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    except tf.errors.OpError as e:  # the user is told about the full disk either way
      logging.warning("could not remove %s: %s", path, e)


def _disk_full_message(directory: str, number: int) -> str:
  if os.path.basename(directory).startswith(SCRATCH_PREFIX):
    return (f"disk full while saving checkpoint ckpt-{number} to {directory} (this worker's scratch copy, under "
            "TMPDIR): free space there or set TMPDIR to a larger disk, then rerun; it resumes from the latest "
            "checkpoint in --model_dir")
  latest = tf.train.latest_checkpoint(directory)
  resume = f"resumes from {os.path.basename(latest)}" if latest else "starts from the beginning (nothing was saved)"
  return (f"disk full while saving checkpoint ckpt-{number} to {directory}: free space there or choose another "
          f"--model_dir, then rerun; it {resume}")
