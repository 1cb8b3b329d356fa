"""The outer loop: build the models under the strategy, restore, run the schedule, checkpoint, report."""

import dataclasses
import functools
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable, Mapping

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import checkpoints
from trainer.data import ExamplesFn, distributed_iterator
from trainer.errors import ClusterFault, Preempted, TrainingFailed, UserError, did_you_mean
from trainer.faults import Preemption, Watchdog
from trainer.schedule import Schedule
from trainer.step import LossFn, PhaseLoop
from trainer.strategy import is_chief
from trainer.telemetry import Telemetry

Evaluate = Callable[[Mapping[str, keras.Model], str], Mapping[str, float | np.ndarray]]
"""Maps (models, model_dir) to named figures (numbers) and pictures (uint8 arrays [H, W, C]).

Pictures go to TensorBoard and to model_dir/samples/<name>_<update>.png; numbers to the log, metrics.jsonl and
TensorBoard."""


@dataclasses.dataclass
class Run:
  """What a finished `train` call leaves behind (for tests and for callers that go on using the models)."""

  models: dict[str, keras.Model]
  optimizers: dict[str, keras.optimizers.Optimizer]
  loops: dict[tuple[str, int], PhaseLoop]
  update: int
  last_log: dict
  last_eval: dict


def _positive(name: str, value) -> None:
  if not isinstance(value, int) or value < 1:
    raise UserError(f"{name} must be a positive integer, got {value!r}")


def _validate(models, optimizers, losses, schedule: Schedule, train_steps, global_batch_size, replicas) -> None:
  _positive("train.train_steps (TRAIN_STEPS)", train_steps)
  _positive("train.global_batch_size (GLOBAL_BATCH_SIZE)", global_batch_size)
  for what, table in (("optimizers", optimizers), ("losses", losses)):
    for name in table:
      if name not in models:
        raise UserError(f"train.{what} has an entry for '{name}', which is not in train.models "
                        f"({', '.join(models)}){did_you_mean(name, models)}")
  for i, phase in enumerate(schedule.phases):
    if phase.model not in models:
      raise UserError(f"the schedule's phase {i} trains model '{phase.model}', but train.models defines only "
                      f"{', '.join(models)}{did_you_mean(phase.model, models)}")
    for what, table in (("optimizers", optimizers), ("losses", losses)):
      if phase.model not in table:
        raise UserError(f"model '{phase.model}' is trained by the schedule but has no entry in train.{what}")
  if global_batch_size % replicas:
    raise UserError(f"GLOBAL_BATCH_SIZE={global_batch_size} does not divide over {replicas} replicas; "
                    f"use a multiple of {replicas}, e.g. {(global_batch_size // replicas + 1) * replicas}")


def _check_writable(model_dir: str) -> None:
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, f".write-test-{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UserError(f"--model_dir={model_dir} is not writable ({type(e).__name__}); choose a directory you can "
                    "write to") from e


def _build(strategy, factories, optimizer_factories, seed):
  """Creates every model and optimizer, and every optimizer's slots, under the strategy scope before any step."""
  with strategy.scope():
    keras.utils.set_random_seed(seed)
    models, optimizers = {}, {}
    for name, factory in factories.items():
      model = factory()
      if not isinstance(model, keras.Model) or not model.built or not model.trainable_variables:
        raise UserError(f"train.models['{name}'] must return a built keras.Model with trainable weights "
                        "(give it a keras.Input)")
      models[name] = model
    for name, factory in optimizer_factories.items():
      optimizers[name] = factory()
      optimizers[name].build(models[name].trainable_variables)
    counters = {
        "update": tf.Variable(0, dtype=tf.int64, trainable=False, name="update"),
        "micro_batch": tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_batch"),
    }
  return models, optimizers, counters


def _evaluate(evaluate: Evaluate, models, model_dir: str, update: int, telemetry: Telemetry) -> dict:
  start = time.perf_counter()
  results = evaluate(models, model_dir)
  for name, value in results.items():
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
      telemetry.image(f"eval/{name}", value, update)
  figures = {f"eval/{k}": float(v) for k, v in results.items()
             if not (isinstance(v, np.ndarray) and v.dtype == np.uint8)}
  logging.info("eval at update %d (%.1fs): %s", update, time.perf_counter() - start,
               " ".join(f"{k}={v:.4g}" for k, v in figures.items()))
  telemetry.write({"update": update, **figures}, update)
  return figures


def _next_multiple(update: int, every: int) -> int:
  return (update // every + 1) * every if every > 0 else np.iinfo(np.int64).max


# What a lost or failed peer raises inside a collective (UnavailableError after the ~10 s heartbeat).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError)


@gin.configurable(denylist=["model_dir", "strategy", "stall_timeout"])
def train(
    model_dir: str,
    strategy: tf.distribute.Strategy,
    *,
    models: Mapping[str, Callable[[], keras.Model]] = gin.REQUIRED,
    optimizers: Mapping[str, Callable[[], keras.optimizers.Optimizer]] = gin.REQUIRED,
    losses: Mapping[str, LossFn] = gin.REQUIRED,
    examples: ExamplesFn = gin.REQUIRED,
    schedule: Schedule = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    global_batch_size: int = gin.REQUIRED,
    seed: int = 0,
    steps_per_loop: int = 50,
    log_every: int = 100,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    evaluate: Evaluate | None = None,
    eval_every: int = 0,
    on_setup: Callable[[str], None] | None = None,
    stall_timeout: float = 0,
) -> Run:
  """Trains `models` on the alternating `schedule` for `train_steps` optimizer updates in total.

  Args:
    model_dir: where checkpoints/, summaries/, metrics.jsonl and operative_config.gin go. An existing run there
      is resumed from its latest checkpoint.
    strategy: the tf.distribute strategy; datasets are distributed by it.
    models: model name -> factory returning a built keras.Model (e.g. a gin-scoped `@generator/mlp`).
    optimizers: model name -> factory returning that model's own Keras optimizer (e.g. `@critic/Adam`).
    losses: model name -> loss function (trainer.step.LossFn) of the phases that train that model.
    examples: the data, as a function of global example indices (trainer.data.ExamplesFn).
    schedule: which model trains when, and with how many micro-batches per update.
    train_steps: total optimizer updates, summed over all models (gin macro TRAIN_STEPS).
    global_batch_size: examples per micro-batch, summed over all replicas (gin macro GLOBAL_BATCH_SIZE).
    seed: seeds model initialisation (the data has its own seed in `examples`).
    steps_per_loop: the most updates run inside one compiled call (fewer at phase, log, checkpoint and eval
      boundaries); Python dispatch is paid once per loop.
    log_every: updates between progress lines / metrics.jsonl records / TensorBoard scalars.
    checkpoint_every: updates between checkpoints (one is also written at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    evaluate: optional quality measurement, run by the chief every `eval_every` updates and at the end.
    eval_every: updates between evaluations; 0 evaluates only at the end.
    on_setup: called with model_dir once everything is built (trainer.main writes the operative config there).
    stall_timeout: seconds one compiled loop call may take before the process exits with code 4 (0: no limit);
      trainer.main's --stall_timeout. A stalled peer otherwise blocks the others' collectives forever.

  On SIGTERM, every worker saves a checkpoint at the next loop boundary and raises Preempted (exit code 42).
  """
  for name, value in (("steps_per_loop", steps_per_loop), ("log_every", log_every),
                      ("checkpoint_every", checkpoint_every), ("keep_checkpoints", keep_checkpoints)):
    _positive(f"train.{name}", value)
  if not isinstance(eval_every, int) or eval_every < 0:
    raise UserError(f"train.eval_every must be an integer >= 0 (0: only at the end), got {eval_every!r}")
  replicas = strategy.num_replicas_in_sync
  _validate(models, optimizers, losses, schedule, train_steps, global_batch_size, replicas)
  chief = is_chief(strategy)
  if chief:
    _check_writable(model_dir)

  built, opts, counters = _build(strategy, {n: models[n] for n in sorted(models)},
                                 {n: optimizers[n] for n in sorted(optimizers)}, seed)
  # Every worker must call save (the variables need all of them); only the chief's copy is kept.
  checkpoint_dir = os.path.join(model_dir, "checkpoints")
  save_dir = checkpoint_dir if chief else tempfile.mkdtemp(prefix="trainer-worker-checkpoints-")
  telemetry = Telemetry(model_dir, train_steps, write_files=chief)
  loops: dict[tuple[str, int], PhaseLoop] = {}
  last_log, last_eval = {}, {}
  # A non-chief's scratch copy goes when train returns, and also when the watchdog ends the process (os._exit).
  remove_scratch = None if chief else functools.partial(shutil.rmtree, save_dir, ignore_errors=True)
  watchdog = Watchdog(stall_timeout, on_exit=remove_scratch)
  preemption = Preemption(strategy)
  update = saved_at = 0
  try:
    manager = checkpoints.make_manager(save_dir, built, opts, counters, keep_checkpoints)
    checkpoints.restore_latest(manager.checkpoint, checkpoint_dir)
    update = int(counters["update"].numpy())
    if update >= train_steps:
      logging.info("%s already holds %d updates (train_steps=%d): nothing to do", model_dir, update, train_steps)
    if chief and on_setup:
      on_setup(model_dir)
    logging.info("training %s with %s on %d replica(s), global batch %d, from update %d of %d",
                 ", ".join(built), schedule, replicas, global_batch_size, update, train_steps)
    iterator = distributed_iterator(strategy, examples, global_batch_size, int(counters["micro_batch"].numpy()))
    total_micro = schedule.micro_batches_before(train_steps)
    saved_at = update
    while update < train_steps:
      position = schedule.position(update)
      phase = position.phase
      n = min(position.updates_left, train_steps - update, steps_per_loop,
              _next_multiple(update, log_every) - update,
              _next_multiple(update, checkpoint_every) - update,
              _next_multiple(update, eval_every) - update)
      key = (phase.model, phase.micro_batches)
      if key not in loops:
        loops[key] = PhaseLoop(strategy, built, phase.model, opts[phase.model], losses[phase.model],
                               phase.micro_batches, global_batch_size, counters)
      loop = loops[key]
      with watchdog.watch(f"updates {update + 1}-{update + n} (phase '{phase.model}')"):
        rows, applied = loop.loop(iterator, tf.constant(n, tf.int32))
        rows, applied = rows.numpy(), int(applied.numpy())
      telemetry.record(phase.model, loop.figure_names, rows[:applied],
                       applied * phase.micro_batches * global_batch_size)
      update += applied
      if applied < n:
        saved = manager.save(checkpoint_number=update, check_interval=False)
        bad = ", ".join(f"{phase.model}/{k}={v:.4g}" for k, v in zip(loop.figure_names, rows[applied]))
        raise TrainingFailed(
            f"non-finite loss or gradient at update {update + 1} (phase '{phase.model}': {bad}); that update was "
            f"not applied and the last good state is saved as {saved}. Lower the learning rate of "
            f"'{phase.model}' or check its loss")
      if update % log_every == 0 or update == train_steps:
        remaining = (total_micro - schedule.micro_batches_before(update)) * global_batch_size
        last_log = telemetry.flush(update, phase.model, remaining)
      if update % checkpoint_every == 0 or update == train_steps:
        manager.save(checkpoint_number=update)
        saved_at = update
      if chief and evaluate and (update == train_steps or (eval_every and update % eval_every == 0)):
        last_eval = _evaluate(evaluate, built, model_dir, update, telemetry)
      if update < train_steps and preemption.requested():
        if saved_at != update:
          manager.save(checkpoint_number=update, check_interval=False)
        raise Preempted(f"SIGTERM received; saved update {update} of {train_steps} in {checkpoint_dir}; run the "
                        "same command again to resume")
  except _PEER_ERRORS as e:
    raise ClusterFault(f"lost contact with a peer worker after update {update} ({type(e).__name__}); restart the "
                       "whole job (launch.local --max_restarts does): it resumes from the last checkpoint (update "
                       f"{saved_at})") from e
  finally:
    preemption.close()
    telemetry.close()
    if remove_scratch:
      remove_scratch()
  return Run(built, opts, loops, update, last_log, last_eval)
