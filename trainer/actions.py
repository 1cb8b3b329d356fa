"""The periodic work of a run besides checkpoints, as controller actions: progress lines, evaluation, export."""

import time
from typing import Callable, Mapping

import keras
import numpy as np

from trainer import export
from trainer.controller import Action
from trainer.schedule import Schedule
from trainer.telemetry import Telemetry
from trainer.update import averaged_weights

EvaluateFn = Callable[[Mapping[str, keras.Model]], Mapping[str, float | np.ndarray]]
"""Maps the models by name to named figures (numbers) and pictures (uint8 arrays [H, W, C]).

Pictures go to TensorBoard and to model_dir/samples/<name>_<update>.png; numbers to the log, metrics.jsonl and
TensorBoard."""

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


class Evaluation(Action):
  """Every `every` updates (0: at the end only), on the chief: `evaluate(models)`, reported by telemetry. A model
  whose optimizer keeps a moving average (Keras's `use_ema`) is evaluated with the averaged weights."""

  chief_only = True

  def __init__(self, evaluate: EvaluateFn, models: Mapping[str, keras.Model],
               optimizers: Mapping[str, keras.optimizers.Optimizer], telemetry: Telemetry, every: int):
    self.every = every
    self.last: dict = {}
    self._evaluate, self._models, self._optimizers, self._telemetry = evaluate, models, optimizers, telemetry

  def __call__(self, update: int) -> None:
    start = time.perf_counter()
    with averaged_weights(self._models, self._optimizers):
      results = self._evaluate(self._models)
    self.last = self._telemetry.evaluation(results, update, time.perf_counter() - start)


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
