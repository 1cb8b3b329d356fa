"""The training recipe: validate, build every model and optimizer under the strategy, restore, hand the loop to the
controller with its actions, return what was trained."""

import dataclasses
import functools
import os
import shutil
import tempfile
import uuid
from typing import Callable, Mapping

import gin
import keras
import tensorflow as tf
from absl import logging

from trainer import actions, best, checkpoints, export as export_, fingerprints, phase as phases_
from trainer.divergence import SkipGuard
from trainer.controller import Checkpointer, Controller
from trainer.cycle import CycleLoop
from trainer.data import ExamplesFn, distributed_iterator
from trainer.errors import UserError, check_count, did_you_mean
from trainer.faults import Preemption, Watchdog
from trainer.schedule import Schedule
from trainer.state import State, build  # noqa: F401  (State: part of train's interface)
from trainer.phase import LossFn, Phase
from trainer.step import PhaseLoop
from trainer.strategy import describe, is_chief
from trainer.telemetry import Telemetry


_FINGERPRINT = "data_fingerprint"  # the checkpoint's name for trainer.fingerprints' string


@dataclasses.dataclass
class Run:
  """What a finished `train` call leaves behind (for tests and for callers that go on using the models)."""

  models: dict[str, keras.Model]
  optimizers: dict[str, keras.optimizers.Optimizer]
  loops: dict[tuple[str, int], PhaseLoop]
  cycle: CycleLoop | None
  update: int
  last_log: dict
  last_eval: dict


def _validate(models, optimizers, losses, phases, schedule: Schedule, train_steps, global_batch_size, replicas,
              counts: Mapping[str, int]) -> dict[str, Phase]:
  """Checks the run's settings; returns the phase of every schedule entry name (trainer.phase.resolve)."""
  check_count("train.train_steps (TRAIN_STEPS)", train_steps)
  check_count("train.global_batch_size (GLOBAL_BATCH_SIZE)", global_batch_size)
  for name, value in counts.items():
    check_count(f"train.{name}", value, minimum=0 if name == "eval_every" else 1)
  for what, table in (("optimizers", optimizers), ("losses", losses)):
    for name in table:
      if name not in models:
        raise UserError(f"train.{what} has an entry for '{name}', which is not in train.models "
                        f"({', '.join(models)}){did_you_mean(name, models)}")
  resolved = phases_.resolve(schedule.names, phases, models, losses, optimizers)
  schedule.with_phase_micro_batches({name: phase.micro_batches for name, phase in resolved.items()})
  if global_batch_size % replicas:
    raise UserError(f"GLOBAL_BATCH_SIZE={global_batch_size} does not divide over {replicas} replicas; "
                    f"use a multiple of {replicas}, e.g. {(global_batch_size // replicas + 1) * replicas}")
  return resolved


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


def _fingerprint_slot(checkpoint_dir: str) -> dict[str, tf.Variable]:
  """{'data_fingerprint': a string variable} for the checkpoint (trainer.fingerprints), or {} when the run resumes
  a checkpoint written before fingerprints existed, which would not restore with it (that run stays unchecked)."""
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  try:
    old = bool(latest) and f"{_FINGERPRINT}/.ATTRIBUTES/VARIABLE_VALUE" not in (
        tf.train.load_checkpoint(latest).get_variable_to_shape_map())
  except (tf.errors.OpError, ValueError):  # unreadable: restore_latest says so, naming the files
    old = False
  return {} if old else {_FINGERPRINT: tf.Variable("", dtype=tf.string, trainable=False, name=_FINGERPRINT)}


def _input(strategy: tf.distribute.Strategy, examples: ExamplesFn, global_batch_size: int, micro_batch: tf.Variable,
           fingerprint: Mapping[str, tf.Variable], checkpoint_dir: str) -> tf.distribute.DistributedIterator:
  """The input from the restored micro-batch on, refused (before anything is saved) when the data it reads is not
  the data the checkpoint was trained on; the fingerprint variable then holds the current data's for the next save."""
  with fingerprints.collecting() as found:  # the ExamplesFn notes its data while the pipelines are built
    iterator = distributed_iterator(strategy, examples, global_batch_size, int(micro_batch.numpy()))
  current = fingerprints.combine(found)
  for variable in fingerprint.values():
    fingerprints.check(variable.numpy().decode(), current, checkpoint_dir)
    variable.assign(current)
  return iterator


def _log_start(model_dir: str, state: State, schedule: Schedule, strategy: tf.distribute.Strategy,
               global_batch_size: int, start: int, train_steps: int) -> None:
  """The start-up summary: what trains, how, on what, from where."""
  if start >= train_steps:
    logging.info("%s already holds %d updates (train_steps=%d): nothing to do", model_dir, start, train_steps)
  logging.info("training %s with %s on %d replica(s) (%s), global batch %d, from update %d of %d",
               ", ".join(state.models), schedule, strategy.num_replicas_in_sync, describe(strategy),
               global_batch_size, start, train_steps)


def _check_keep_best(figure: str | None, mode: str, evaluate: list[actions.EvaluateFn]) -> None:
  best.check(figure, mode)
  if figure and not evaluate:
    raise UserError(f"train.keep_best = {figure!r} needs an evaluation: set train.evaluate")


def _keep_best(figure: str, mode: str, model_dir: str, save_dir: str, state: State, saved: Mapping[str, tf.Variable],
               export_models: bool, chief: bool) -> best.KeepBest:
  """trainer.best.KeepBest over the training state: checkpoints in model_dir/best/checkpoints/ (a non-chief's in
  its scratch directory, which goes when the run ends)."""
  directory = os.path.join(model_dir if chief else save_dir, best.DIRECTORY, "checkpoints")
  manager = checkpoints.make_manager(directory, state.models, state.optimizers, saved, max_to_keep=1)
  write = lambda directory: export_.write(state.models, state.optimizers, directory)
  return best.KeepBest(figure, mode, model_dir, lambda update: checkpoints.save(manager, update, check_interval=False),
                       write if export_models else None, chief)


@gin.configurable(denylist=["model_dir", "strategy", "stall_timeout"])
def train(
    model_dir: str,
    strategy: tf.distribute.Strategy,
    *,
    models: Mapping[str, Callable[[], keras.Model]] = gin.REQUIRED,
    optimizers: Mapping[str, Callable[[], keras.optimizers.Optimizer]] = gin.REQUIRED,
    losses: Mapping[str, LossFn] | None = None,
    phases: Mapping[str, Phase] | None = None,
    examples: ExamplesFn = gin.REQUIRED,
    schedule: Schedule = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    global_batch_size: int = gin.REQUIRED,
    seed: int = 0,
    steps_per_loop: int = 50,
    span_phases: bool = True,
    log_every: int = 100,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    evaluate: actions.EvaluateFn | list[actions.EvaluateFn] | None = None,
    eval_every: int = 0,
    keep_best: str | None = None,
    keep_best_mode: str = "min",
    export: actions.ExportFn | None = None,
    export_models: bool = True,
    precision: str | Mapping[str, str] = "float32",
    on_nonfinite: str = "stop",
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
    losses: model name -> loss function (trainer.phase.LossFn) of the schedule entries that name that model.
    phases: phase name -> trainer.phase.phase(trains=..., loss=...): the phases schedule entries may name besides
      models (a joint phase, a second loss for a model, simultaneous updates: trainer.phase).
    examples: the data, as a function of global example indices (trainer.data.ExamplesFn).
    schedule: which phase trains when, and with how many micro-batches per update.
    train_steps: total optimizer updates, summed over all models (gin macro TRAIN_STEPS).
    global_batch_size: examples per micro-batch, summed over all replicas (gin macro GLOBAL_BATCH_SIZE).
    seed: seeds model initialisation (the data has its own seed in `examples`).
    steps_per_loop: the most updates run inside one compiled call (fewer where an action is due); Python
      dispatch and the host's read of the figures are paid once per call.
    span_phases: past the warm-up, one call runs across phase boundaries (the cycle as one program,
      trainer.cycle); False ends every call at a phase boundary, as the warm-up's calls do.
    log_every: updates between progress lines / metrics.jsonl records / TensorBoard scalars.
    checkpoint_every: updates between checkpoints (one is also written at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    evaluate: optional quality measurements (trainer.actions.EvaluateFn, or a list of them), run every
      `eval_every` updates and at the end: by the chief, or by every worker for one that takes `strategy`
      (trainer.frechet.FrechetDistance).
    eval_every: updates between evaluations; 0 evaluates only at the end.
    keep_best: an evaluation figure (e.g. 'eval/fcd'): keep the checkpoint and export with its best value in
      model_dir/best/ (trainer.best).
    keep_best_mode: 'min' (lower is better, as for a distance) or 'max'.
    export: optional (models, model_dir) -> None, run by the chief after the last update.
    export_models: whether the chief writes every model to model_dir/export/ after the last update
      (trainer.export: .keras and SavedModel, EMA weights where kept); `python -m trainer.export` does it later.
    precision: a Keras dtype policy for every model ('float32', 'mixed_bfloat16', 'mixed_float16'), or a dict from
      model name to one (trainer.precision); float16 models get dynamic loss scaling.
    on_nonfinite: 'stop' (exit 3 before a non-finite window) or 'skip' (drop it and go on, within the limits of
      SkipGuard's bindings): trainer.divergence.
    on_setup: called with model_dir once everything is built (trainer.main writes the operative config there).
    stall_timeout: seconds one compiled loop call may take before the process exits with code 4 (0: no limit);
      trainer.main's --stall_timeout. A stalled peer otherwise blocks the others' collectives forever.

  On SIGTERM (or SIGUSR1, Slurm's warning), every worker saves at the next call boundary and raises Preempted.
  """
  losses, phases = dict(losses or {}), dict(phases or {})
  resolved = _validate(models, optimizers, losses, phases, schedule, train_steps, global_batch_size,
                       strategy.num_replicas_in_sync,
                       dict(steps_per_loop=steps_per_loop, log_every=log_every, checkpoint_every=checkpoint_every,
                            keep_checkpoints=keep_checkpoints, eval_every=eval_every))
  evaluate = actions.evaluations(evaluate)
  _check_keep_best(keep_best, keep_best_mode, evaluate)
  guard, chief = SkipGuard(on_nonfinite), is_chief(strategy)
  if chief:
    _check_writable(model_dir)
  state = build(strategy, models, optimizers, seed, precision)
  # Every worker must call save (the variables need all of them); only the chief's copy is kept.
  checkpoint_dir = os.path.join(model_dir, "checkpoints")
  save_dir = checkpoint_dir if chief else tempfile.mkdtemp(prefix=checkpoints.SCRATCH_PREFIX)
  # A non-chief's scratch copy goes when train returns, and also when the watchdog ends the process (os._exit).
  remove_scratch = None if chief else functools.partial(shutil.rmtree, save_dir, ignore_errors=True)
  telemetry = Telemetry(model_dir, train_steps, write_files=chief)
  watchdog, preemption = Watchdog(stall_timeout, on_exit=remove_scratch), Preemption(strategy)
  try:
    scales = {f"loss_scale_{name}": scale for name, scale in state.loss_scales.items()}
    fingerprint = _fingerprint_slot(checkpoint_dir)
    saved = {**state.counters, **scales, **fingerprint}
    manager = checkpoints.make_manager(save_dir, state.models, state.optimizers, saved, keep_checkpoints)
    checkpoints.restore_latest(manager.checkpoint, checkpoint_dir)
    start = int(state.counters["update"].numpy())
    if chief and on_setup:
      on_setup(model_dir)
    _log_start(model_dir, state, schedule, strategy, global_batch_size, start, train_steps)
    iterator = _input(strategy, examples, global_batch_size, state.counters["micro_batch"], fingerprint, checkpoint_dir)
    make_loop = lambda entry: PhaseLoop(strategy, state, resolved[entry.name], entry.micro_batches, global_batch_size,
                                        skip_nonfinite=guard.skips)
    log = actions.Log(telemetry, log_every, schedule, train_steps, global_batch_size)
    keeper = keep_best and _keep_best(keep_best, keep_best_mode, model_dir, save_dir, state, saved, export_models, chief)
    evaluation = evaluate and actions.Evaluation(evaluate, state, telemetry, eval_every, strategy, chief, keeper or None)
    periodic = [log, evaluation, actions.Export(export, state.models, state.optimizers, model_dir, export_models)]
    checkpointer = Checkpointer(functools.partial(checkpoints.save, manager), checkpoint_every, checkpoint_dir, start)
    controller = Controller(schedule=schedule, train_steps=train_steps, steps_per_loop=steps_per_loop, start=start,
                            make_loop=make_loop, iterator=iterator, telemetry=telemetry, checkpointer=checkpointer,
                            actions=[a for a in periodic if a], watchdog=watchdog, preemption=preemption, chief=chief,
                            span_phases=span_phases, guard=guard)
    update = controller.run()
  finally:
    preemption.close()
    telemetry.close()
    if remove_scratch:
      remove_scratch()
  return Run(state.models, state.optimizers, controller.loops, controller.cycle, update, log.last, evaluation.last if evaluation else {})
