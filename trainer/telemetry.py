"""Progress reporting: a console line, one JSON object per interval in metrics.jsonl, TensorBoard scalars and
images, and evaluation pictures as PNG files in model_dir/samples/."""

import contextlib
import json
import math
import os
import time
from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.checkpoints import is_disk_full
from trainer.errors import UserError


def format_duration(seconds: float) -> str:
  """'1h02m', '3m05s', '42s'."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def is_picture(value: object) -> bool:
  """Whether an evaluation result is a picture (a uint8 array), not a number."""
  return isinstance(value, np.ndarray) and value.dtype == np.uint8


def evaluation_figures(results: Mapping[str, float | np.ndarray]) -> dict[str, float]:
  """An evaluation's numbers under their reported names, eval/<name> (its pictures left out)."""
  return {f"eval/{k}": float(v) for k, v in results.items() if not is_picture(v)}


class Telemetry:
  """Collects per-update figures and writes them out once per log interval.

  A figure is reported as its mean over the updates of the interval in which its phase trained; a phase that did
  not train in the interval keeps its last reported value on the console (and is absent from that JSON line).
  Only the chief writes files (`write_files`); every task may print.
  """

  def __init__(self, model_dir: str, total_updates: int, write_files: bool = True):
    self._total = total_updates
    self._model_dir = model_dir
    self._write_files = write_files
    self._sums: dict[str, float] = {}
    self._counts: dict[str, int] = {}
    self._last: dict[str, float] = {}
    self._examples = 0
    self._start = time.perf_counter()
    self._jsonl = None
    self._writer = None
    if write_files:
      self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")
      self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "summaries"))

  def record(self, figures: Mapping[str, np.ndarray], examples: int) -> None:
    """Adds figures {"phase/figure": one value per update} and the examples they consumed. NaN marks a figure an
    update does not have (another phase's, or a skipped float16 window's gradient norm): it is left out of that
    figure's mean."""
    for key, values in figures.items():
      defined = ~np.isnan(values)
      self._sums[key] = self._sums.get(key, 0.0) + float(np.sum(values[defined]))
      self._counts[key] = self._counts.get(key, 0) + int(np.sum(defined))
    self._examples += examples

  def flush(self, update: int, phase: str, remaining_examples: int) -> dict:
    """Writes the interval ending at `update` and starts a new one. Returns the JSON object written."""
    now = time.perf_counter()
    elapsed = max(now - self._start, 1e-9)
    figures = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
    self._last.update(figures)
    rate = self._examples / elapsed
    eta = remaining_examples / rate if rate > 0 else float("inf")
    record = {
        "update": update,
        "total_updates": self._total,
        "phase": phase,
        "time": time.time(),
        "examples_per_sec": rate,
        "eta_sec": eta if math.isfinite(eta) else None,
        **figures,
    }
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(self._last.items()))
    logging.info(
        "update %d/%d | phase %s | %s | %.0f examples/s | ETA %s",
        update, self._total, phase, shown, rate, format_duration(eta),
    )
    if self._write_files:
      self.write(record, update)
    self._sums, self._counts, self._examples, self._start = {}, {}, 0, now
    return record

  def write(self, record: Mapping, step: int) -> None:
    """Appends `record` to metrics.jsonl and writes its numeric entries as TensorBoard scalars at `step`."""
    if not self._write_files:
      return
    with self._disk("metrics.jsonl and TensorBoard events"):
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      with self._writer.as_default(step=step):
        for key, value in record.items():
          if key not in ("update", "total_updates", "time") and isinstance(value, (int, float)):
            tf.summary.scalar(key, value)
      self._writer.flush()

  @contextlib.contextmanager
  def _disk(self, what: str) -> Iterator[None]:
    """Within: a full disk is one UserError (exit 2) saying what to do; the checkpoints are not touched."""
    try:
      yield
    except (OSError, tf.errors.OpError) as e:
      if not is_disk_full(e):
        raise
      latest = tf.train.latest_checkpoint(os.path.join(self._model_dir, "checkpoints"))
      resume = f"resumes from {os.path.basename(latest)}" if latest else "starts from the beginning"
      raise UserError(f"disk full while writing {what} in {self._model_dir}: free space there or choose another "
                      f"--model_dir, then rerun; it {resume}") from e

  def evaluation(self, results: Mapping[str, float | np.ndarray], update: int, seconds: float) -> dict:
    """Reports an evaluation's results at `update`: uint8 arrays as pictures (`image`), the rest as numbers on the
    console, in metrics.jsonl and TensorBoard under eval/. Returns the numbers."""
    for name, value in results.items():
      if is_picture(value):
        self.image(f"eval/{name}", value, update)
    figures = evaluation_figures(results)
    logging.info("eval at update %d (%.1fs): %s", update, seconds, " ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    self.write({"update": update, **figures}, update)
    return figures

  def image(self, name: str, image: np.ndarray, step: int) -> str | None:
    """Writes uint8 `image` [H, W, C] as a TensorBoard image and as model_dir/samples/<name>_<step>.png.

    Returns the PNG's path (None where this task writes no files).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise ValueError(f"picture {name!r} must be uint8 [H, W, 1 or 3], got {image.dtype} {list(image.shape)}")
    if not self._write_files:
      return None
    directory = os.path.join(self._model_dir, "samples")
    path = os.path.join(directory, f"{name.replace('/', '_')}_{step:06d}.png")
    with self._disk(f"the picture {os.path.basename(path)}"):
      with self._writer.as_default(step=step):
        tf.summary.image(name, image[None])
      self._writer.flush()
      tf.io.gfile.makedirs(directory)
      with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
    return path

  def close(self) -> None:
    """Closes the files; on a full disk (already reported by the write that met it) what they still buffer is lost."""
    if self._jsonl:
      for close in (self._jsonl.close, self._writer.close):
        try:
          close()
        except (OSError, tf.errors.OpError) as e:
          if not is_disk_full(e):
            raise
