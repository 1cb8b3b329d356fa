r"""Evaluation benchmark: python -m benchmarks.evaluation [--samples=10000] [--repeats=5] [--output=FILE.json].

Times the default job's Fréchet classifier distance (configs/gan_digits.gin: 10,000 samples of its MLP generator
in the shipped classifier's features, the real statistics cached) as trainer computes it (trainer.frechet: every
replica its share, float64 sums, one all-reduce) at 1 and 2 MirroredStrategy replicas on logical CPU devices,
against the usual alternative on the chief (`naive`: eager batches, float32 features gathered on the host, numpy's
covariance and scipy's sqrtm, as pytorch-fid and TF-GAN's eager path do), and the default job's training alone
(its 8,000 updates, no evaluation). Each row is a child process of its own; a row is the best of --repeats calls
after a first one, which is reported apart (it traces). The evaluation's share of training is
(first + 3 x steady) / training: the default job evaluates 4 times. Prints a table; --output writes it as JSON.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app, flags  # noqa: E402

ROWS = ["trainer:1", "trainer:2", "naive", "training"]
CONFIG = "configs/gan_digits.gin"
EVALUATIONS_PER_RUN = 4  # the default job: eval_every 2000 of 8000 updates


def _timed(call, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, best seconds of the next `repeats`)."""
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return first, best


def _child(row: str, samples: int, repeats: int) -> dict:
  from trainer.strategy import split_cpu  # pylint: disable=import-outside-toplevel
  replicas = int(row.split(":")[1]) if row.startswith("trainer") else 1
  split_cpu(replicas)
  import gin  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from trainer import config, frechet, state, train  # pylint: disable=import-outside-toplevel
  config.parse([CONFIG], [f"FrechetDistance.samples = {samples}"])
  if row == "training":
    config.parse([], ["train.evaluate = None", "train.export_models = False", "train.checkpoint_every = 8000"])
    with tempfile.TemporaryDirectory() as model_dir:
      start = time.perf_counter()
      train.train(model_dir, tf.distribute.MirroredStrategy(["/cpu:0"]))
      return {"row": row, "seconds": time.perf_counter() - start}
  strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
  run = gin.get_bindings("train")
  models = state.build(strategy, run["models"], {}, seed=0).models  # the run's initial weights, in every row
  evaluation = [e for e in run["evaluate"] if isinstance(e, frechet.FrechetDistance)][0]
  real = evaluation.real_statistics(evaluation.features())  # cached before timing, as in a run's later evaluations
  if row == "naive":
    call = lambda: _naive(evaluation, models, real, samples)
  else:
    call = lambda: evaluation(models, strategy)
  first, best = _timed(call, repeats)
  value = call()
  return {"row": row, "first": first, "seconds": best, "fcd": value if row == "naive" else value["fcd"]}


def _naive(evaluation, models, real, samples: int) -> float:
  """The chief alone, eagerly: float32 features per batch gathered on the host, numpy cov, scipy sqrtm."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  network = evaluation._network(tf.distribute.get_strategy())  # pylint: disable=protected-access
  parts = []
  for first in range(0, samples, evaluation.batch):
    indices = tf.range(first, min(first + evaluation.batch, samples), dtype=tf.int64)
    parts.append(network(evaluation.generate(models, indices), training=False).numpy())
  x = np.concatenate(parts).astype(np.float64)
  mean_a, cov_a = x.mean(0), np.cov(x, rowvar=False)
  mean_b, cov_b = real.mean_and_covariance()
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def main(argv: list[str]) -> None:
  del argv
  samples, repeats, output = flags.FLAGS.samples, flags.FLAGS.repeats, flags.FLAGS.output
  if flags.FLAGS.row:
    print(json.dumps(_child(flags.FLAGS.row, samples, repeats)))
    return
  results = {}
  for row in ROWS:
    done = subprocess.run([sys.executable, "-m", "benchmarks.evaluation", f"--row={row}",
                           f"--samples={samples}", f"--repeats={repeats}"],
                          capture_output=True, text=True, check=False)
    if done.returncode:
      sys.exit(f"row {row} failed:\n{done.stderr[-3000:]}")
    results[row] = json.loads(done.stdout.strip().splitlines()[-1])
  base, training = results["trainer:1"]["seconds"], results["training"]["seconds"]
  print(f"{'row':<11} {'first call s':>12} {'steady s':>9} {'vs trainer:1':>13} {'fcd':>10}")
  for row in ROWS[:-1]:
    r = results[row]
    print(f"{row:<11} {r['first']:>12.3f} {r['seconds']:>9.3f} {r['seconds'] / base:>12.2f}x {r['fcd']:>10.5f}")
  for row in ("trainer:1", "trainer:2"):
    r = results[row]
    r["share_of_training"] = (r["first"] + (EVALUATIONS_PER_RUN - 1) * r["seconds"]) / training
    print(f"{row}: {EVALUATIONS_PER_RUN} evaluations = {100 * r['share_of_training']:.1f}% of the default job's "
          f"training ({training:.1f} s)")
  if output:
    with open(output, "w", encoding="utf-8") as f:
      json.dump({"samples": samples, "rows": results}, f, indent=1)


if __name__ == "__main__":
  # Defined here, not at import: benchmarks.bench defines --repeats and --output too, and tests import both.
  flags.DEFINE_string("row", None, "Internal: run one row in this process (trainer:N, naive, training).")
  flags.DEFINE_integer("samples", 10_000, "Generated samples per evaluation.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per row after the first; the best is kept.")
  flags.DEFINE_string("output", None, "Also write the results as JSON to this file.")
  app.run(main)
