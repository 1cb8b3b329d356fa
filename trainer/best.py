"""The best checkpoint by an evaluation figure (`train.keep_best`), as keras.io's gan_ada keeps the best KID and
Keras's ModelCheckpoint(save_best_only=True) the best monitored value.

After each evaluation whose figure beats the best so far, every worker saves the training state (as for every
checkpoint, only the chief's copy is kept) to model_dir/best/checkpoints/ (one checkpoint), the chief exports the
models to model_dir/best/export/ (trainer.export, moving-average weights where kept) and then records the figure,
its value and the update in model_dir/best/best.json. Every worker reads that file again at every decision (the
model_dir is shared, as it is for resuming), so all of them decide alike, and a resumed run keeps comparing with
the best of the whole run, not of its own part.
"""

import json
import math
import os
from typing import Callable, Mapping

import tensorflow as tf
from absl import logging

from trainer.errors import UserError

DIRECTORY = "best"
MODES = ("min", "max")


def figure_name(figure: str) -> str:
  """'fcd' or 'eval/fcd' -> 'eval/fcd' (evaluation figures are reported under eval/)."""
  return figure if figure.startswith("eval/") else f"eval/{figure}"


def check(figure: str | None, mode: str) -> None:
  if figure is not None and (not isinstance(figure, str) or figure_name(figure.strip()) == "eval/"):
    raise UserError(f"train.keep_best = {figure!r} must name an evaluation figure, e.g. 'eval/fcd'")
  if mode not in MODES:
    raise UserError(f"train.keep_best_mode = {mode!r} must be 'min' (lower is better, e.g. a distance) or 'max'")


class KeepBest:
  """Called with (update, the evaluation's figures every worker has) after each evaluation (trainer.actions)."""

  def __init__(self, figure: str, mode: str, model_dir: str, save: Callable[[int], str | None],
               export: Callable[[str], None] | None, chief: bool):
    """`save(update)` writes the state to the best checkpoint directory (this worker's; the chief's is kept);
    `export(directory)` writes the models under directory/export/ (chief only)."""
    self.figure, self.mode, self.directory = figure_name(figure), mode, os.path.join(model_dir, DIRECTORY)
    self._save, self._export, self._chief = save, export, chief

  def best(self) -> dict | None:
    """What model_dir/best/best.json records ({figure, value, update}), if it records this figure."""
    path = os.path.join(self.directory, "best.json")
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      record = json.load(f)
    return record if record.get("figure") == self.figure else None

  def __call__(self, update: int, figures: Mapping[str, float]) -> None:
    if self.figure not in figures:
      raise UserError(f"train.keep_best = '{self.figure}', but no evaluation reports it on every worker (they "
                      f"report: {', '.join(sorted(figures)) or 'nothing'}); name one of those, or an evaluation "
                      "that takes `strategy` in a multi-worker run")
    value, record = figures[self.figure], self.best()
    better = math.isfinite(value) and (record is None or (value < record["value"] if self.mode == "min"
                                                          else value > record["value"]))
    if not better:
      return
    path = self._save(update)
    if not self._chief:
      return
    if self._export:
      self._export(self.directory)
    record = {"figure": self.figure, "value": value, "update": update, "checkpoint": path}
    tf.io.gfile.makedirs(self.directory)
    temporary = os.path.join(self.directory, "best.json.tmp")
    with tf.io.gfile.GFile(temporary, "w") as f:
      json.dump(record, f)
    tf.io.gfile.rename(temporary, os.path.join(self.directory, "best.json"), overwrite=True)
    logging.info("best %s=%.4g at update %d: saved as %s", self.figure, value, update, path)
