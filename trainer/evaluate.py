r"""A run's evaluations from its checkpoints, outside training (TF-GAN's separate evaluation job):

    python -m trainer.evaluate --model_dir=DIR [--checkpoint=N] [--cpu_replicas=2]
    python -m trainer.evaluate --model_dir=DIR --watch

rebuilds the run from DIR/config.gin (every binding trainer.main was given; --gin_file and --gin_bindings add to
it), restores checkpoint ckpt-N (default: the latest; DIR/best/ is searched too) under the strategy trainer.main's
flags choose, and runs `train.evaluate` exactly as training does: the same figures, to float64 rounding, as the
ones logged at that update, at any replica or worker count. The figures are printed as one JSON object on the
last line of standard output ({"update": N, "eval/<name>": value, ...}; pictures are not printed).

--watch evaluates each new checkpoint as it appears, until the one at train.train_steps (or --timeout seconds
without a new one), writing its own series to DIR/evaluate/ (metrics.jsonl, TensorBoard summaries, samples/).
It runs on one worker: workers could see a different set of checkpoints appear.
"""

import json
import os
import time
from typing import Iterator

# First: trainer.main starts TensorFlow quietly, and its flags (--model_dir, --gin_file, --strategy, ...) are ours.
from trainer import main as training
import gin  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from trainer import actions, checkpoints, config, console, strategy as strategy_  # noqa: E402
from trainer.best import DIRECTORY as BEST  # noqa: E402
from trainer.errors import UserError  # noqa: E402
from trainer.faults import Watchdog  # noqa: E402
from trainer.state import build  # noqa: E402
from trainer.telemetry import Telemetry, evaluation_figures  # noqa: E402

_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Evaluate checkpoint ckpt-N (the update it was saved at); "
                                   "default: the latest.", lower_bound=0)
_WATCH = flags.DEFINE_bool("watch", False, "Evaluate every new checkpoint as it appears, writing DIR/evaluate/.")
_TIMEOUT = flags.DEFINE_float("timeout", 3600, "--watch: seconds to wait for a new checkpoint before stopping.",
                              lower_bound=0)
SERIES = "evaluate"  # --watch writes model_dir/evaluate/


class Evaluator:
  """The run in `model_dir` rebuilt for evaluation: its models and optimizers under `strategy`, and its
  evaluations. `evaluate(path)` restores a checkpoint and returns (update, results)."""

  def __init__(self, model_dir: str, strategy: tf.distribute.Strategy):
    run = gin.get_bindings("train")
    self.evaluations = actions.evaluations(run.get("evaluate"))
    if not self.evaluations:
      raise UserError(f"the run in {model_dir} sets no train.evaluate: there is nothing to evaluate")
    self.train_steps = run.get("train_steps")
    self.strategy, self.chief = strategy, strategy_.is_chief(strategy)
    self.state = build(strategy, run["models"], run["optimizers"], run.get("seed", 0),
                       run.get("precision", "float32"))
    self._checkpoint = checkpoints.state_checkpoint(self.state.models, self.state.optimizers, self.state.counters)

  def evaluate(self, path: str) -> tuple[int, dict]:
    checkpoints.restore(self._checkpoint, path)
    results, _ = actions.run_evaluations(self.evaluations, self.state.models, self.state.optimizers,
                                         self.strategy, self.chief)
    return int(self.state.counters["update"].numpy()), results


def parse(model_dir: str, files: list[str], bindings: list[str]) -> None:
  """Parses the run's config.gin (when there is none, `files` must give the run's config), then `files` and
  `bindings`."""
  run_config = os.path.join(model_dir, config.RUN_CONFIG)
  if os.path.exists(run_config):
    files = [run_config, *files]
  elif not files:
    raise UserError(f"{run_config} not found: give the --model_dir of a run trainer.main wrote, or the run's gin "
                    "file with --gin_file")
  config.parse(files, bindings)


def _number(path: str) -> int:
  """N of a checkpoint path .../ckpt-N (the update it was saved at)."""
  return int(path.rsplit("-", 1)[1])


def checkpoint_path(model_dir: str, number: int | None) -> str:
  """ckpt-`number` in model_dir/checkpoints/ or model_dir/best/checkpoints/, or the latest in the former."""
  directories = [os.path.join(model_dir, "checkpoints"), os.path.join(model_dir, BEST, "checkpoints")]
  if number is None:
    latest = tf.train.latest_checkpoint(directories[0])
    if latest is None:
      raise UserError(f"no checkpoint in {directories[0]}: train first")
    return latest
  for directory in directories:
    path = os.path.join(directory, f"ckpt-{number}")
    if tf.io.gfile.exists(f"{path}.index"):
      return path
  kept = sorted({_number(p.removesuffix(".index")) for d in directories
                 for p in tf.io.gfile.glob(os.path.join(d, "ckpt-*.index"))})
  raise UserError(f"--checkpoint={number}: there is no ckpt-{number} in {model_dir} (it keeps "
                  f"{', '.join(map(str, kept)) or 'none'})")


def new_checkpoints(directory: str, timeout: float, after: int = -1) -> Iterator[str]:
  """Each checkpoint of `directory` numbered above `after`, oldest first, as they appear; ends after `timeout`
  seconds without a new one."""
  waited = 0.0
  while True:
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    fresh = sorted((_number(p), p) for p in paths if _number(p) > after)
    for after, path in fresh:
      yield path
      waited = 0.0
    if not fresh:
      if waited >= timeout:
        return
      time.sleep(min(5.0, timeout - waited))
      waited += 5.0


def figures(update: int, results: dict) -> dict:
  """The JSON object the command prints: the update and every number under eval/."""
  return {"update": update, **evaluation_figures(results)}


def watch(evaluator: Evaluator, model_dir: str, timeout: float) -> dict:
  """--watch: evaluates each new checkpoint into model_dir/evaluate/; returns the last figures."""
  if strategy_.workers(evaluator.strategy) > 1:
    raise UserError("--watch runs on one worker (with all its replicas); start it without TF_CONFIG")
  directory = os.path.join(model_dir, SERIES)
  tf.io.gfile.makedirs(directory)
  telemetry = Telemetry(directory, evaluator.train_steps or 0)
  last: dict = {}
  try:
    for path in new_checkpoints(os.path.join(model_dir, "checkpoints"), timeout):
      start = time.perf_counter()
      try:
        update, results = evaluator.evaluate(path)
      except UserError:  # deleted by the run's keep_checkpoints between the listing and the read: go on
        if tf.io.gfile.exists(f"{path}.index"):
          raise
        logging.info("%s was removed before it could be evaluated", path)
        continue
      telemetry.evaluation(results, update, time.perf_counter() - start)
      last = figures(update, results)
      if update >= (evaluator.train_steps or float("inf")):
        break
  finally:
    telemetry.close()
  return last


def run() -> tuple[dict, bool]:
  """Returns the figures to print and whether this worker prints them (the chief does)."""
  model_dir = training._MODEL_DIR.value  # pylint: disable=protected-access
  parse(model_dir, training._GIN_FILE.value, training._GIN_BINDINGS.value)  # pylint: disable=protected-access
  distribution = strategy_.make_strategy(training._STRATEGY.value, training._CPU_REPLICAS.value,  # pylint: disable=protected-access
                                         training._STARTUP_TIMEOUT.value)  # pylint: disable=protected-access
  evaluator = Evaluator(model_dir, distribution)
  if _WATCH.value:
    return watch(evaluator, model_dir, _TIMEOUT.value), True
  watchdog = Watchdog(training._STALL_TIMEOUT.value)  # pylint: disable=protected-access
  with watchdog.watch("the evaluation"):
    return figures(*evaluator.evaluate(checkpoint_path(model_dir, _CHECKPOINT.value))), evaluator.chief


def main(argv: list[str]) -> None:
  try:
    with console.exit_on_stop():
      if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
      result, chief = run()
      if chief:
        print(json.dumps(result), flush=True)
  finally:
    gin.clear_config()


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
