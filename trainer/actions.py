"""The periodic work of a run besides checkpoints, as controller actions: progress lines, evaluation, export."""

import inspect
import time
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer import export
from trainer.controller import Action
from trainer.errors import UserError
from trainer.schedule import Schedule
from trainer.state import State
from trainer.strategy import workers
from trainer.telemetry import Telemetry, evaluation_figures
from trainer.update import averaged_weights

EvaluateFn = Callable[..., Mapping[str, float | np.ndarray]]
"""Maps the models by name to named figures (numbers) and pictures (uint8 arrays [H, W, C]).

`evaluate(models)` runs on the chief alone, outside the strategy. `evaluate(models, strategy)` (a parameter named
`strategy`) runs on every worker at once and may hold collectives, as trainer.frechet.FrechetDistance does; its
figures must then be the same on every worker. Pictures go to TensorBoard and to model_dir/samples/<name>_<update>.png;
numbers to the log, metrics.jsonl and TensorBoard, as eval/<name>."""

ExportFn = Callable[[Mapping[str, keras.Model], str], None]
"""Writes the trained models, given by name, for use outside trainer, into the run's directory (the 2nd argument)."""


class Log(Action):
  """Every `every` updates: the console line, a metrics.jsonl record and TensorBoard scalars (`Telemetry.flush`)."""

  def __init__(self, telemetry: Telemetry, every: int, schedule: Schedule, train_steps: int, global_batch_size: int):
    self.every = every
    self.last: dict = {}
    self._telemetry, self._schedule = telemetry, schedule
    self._train_steps, self._global_batch_size = train_steps, global_batch_size

  def __call__(self, update: int) -> None:
    micro_batches_left = (self._schedule.micro_batches_before(self._train_steps)
                          - self._schedule.micro_batches_before(update))
    phase = self._schedule.position(update - 1).phase.name
    self.last = self._telemetry.flush(update, phase, micro_batches_left * self._global_batch_size)


def takes_strategy(evaluate: EvaluateFn) -> bool:
  """Whether `evaluate` is a distributed evaluation (see EvaluateFn): it has a parameter named `strategy`."""
  return "strategy" in inspect.signature(evaluate).parameters


def evaluations(evaluate: EvaluateFn | Sequence[EvaluateFn] | None) -> list[EvaluateFn]:
  """train.evaluate as a list: one evaluation, several (their figures joined), or none."""
  if evaluate is None:
    return []
  return list(evaluate) if isinstance(evaluate, (list, tuple)) else [evaluate]


def run_evaluations(evaluate: Sequence[EvaluateFn], models: Mapping[str, keras.Model],
                    optimizers: Mapping[str, keras.optimizers.Optimizer], strategy: tf.distribute.Strategy,
                    chief: bool) -> tuple[dict[str, float | np.ndarray], set[str]]:
  """Runs the evaluations this worker takes part in, with the moving-average weights of the models whose optimizer
  keeps them (Keras's `use_ema`), and joins their results (one name from two evaluations is refused). Returns the
  results and the names of those every worker computed (the distributed evaluations')."""
  results: dict[str, float | np.ndarray] = {}
  everywhere: set[str] = set()
  with averaged_weights(models, optimizers):
    for fn in evaluate:
      if takes_strategy(fn):
        found = fn(models, strategy=strategy)
        everywhere |= set(found)
      elif chief:
        found = fn(models)
      else:
        continue
      if clash := sorted(set(found) & set(results)):
        raise UserError(f"two evaluations in train.evaluate report '{clash[0]}'; give one of them another name")
      results.update(found)
  return results, everywhere


class Evaluation(Action):
  """Every `every` updates (0: at the end only): the evaluations (`run_evaluations`), reported by the chief's
  telemetry; then `on_results(update, figures)` on every worker (trainer.best.KeepBest) if given, with the figures
  every worker has.

  Not `chief_only`: a distributed evaluation needs every worker; the others skip the chief's evaluations."""

  def __init__(self, evaluate: Sequence[EvaluateFn], state: State, telemetry: Telemetry, every: int,
               strategy: tf.distribute.Strategy, chief: bool,
               on_results: Callable[[int, Mapping[str, float]], None] | None = None):
    self.every = every
    self.last: dict = {}
    self._evaluate, self._models, self._optimizers = evaluate, state.models, state.optimizers
    self._telemetry = telemetry
    self._strategy, self._chief, self._on_results = strategy, chief, on_results

  def __call__(self, update: int) -> None:
    start = time.perf_counter()
    results, everywhere = run_evaluations(self._evaluate, self._models, self._optimizers, self._strategy,
                                          self._chief)
    if self._chief:
      self.last = self._telemetry.evaluation(results, update, time.perf_counter() - start)
    if self._on_results:  # only figures every worker has: the workers must take the same decision
      one_worker = workers(self._strategy) == 1
      self._on_results(update, {k: v for k, v in evaluation_figures(results).items()
                                if one_worker or k.removeprefix("eval/") in everywhere})


class Export(Action):
  """After the last update, on the chief: every model into model_dir/export/ (trainer.export: .keras and a
  SavedModel, EMA weights where the optimizer keeps them) when `write_models`, then the task's own
  `export(models, model_dir)` if given."""

  chief_only = True

  def __init__(self, export_fn: ExportFn | None, models: Mapping[str, keras.Model],
               optimizers: Mapping[str, keras.optimizers.Optimizer], model_dir: str, write_models: bool = True):
    self._export, self._models, self._optimizers, self._model_dir = export_fn, models, optimizers, model_dir
    self._write_models = write_models

  def __call__(self, update: int) -> None:
    if self._write_models:
      export.write(self._models, self._optimizers, self._model_dir)
    if self._export:
      self._export(self._models, self._model_dir)
