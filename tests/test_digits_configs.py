"""configs/classifier_digits.gin and configs/gan_digits.gin, shrunk to seconds: what they report and write."""

import json
import os

import numpy as np
import tensorflow as tf

from trainer import config, train
from trainer.tasks import classify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, model_dir, *bindings):
  config.parse([os.path.join(REPO, "configs", f"{name}.gin")], list(bindings))
  return train.train(str(model_dir), tf.distribute.MirroredStrategy(["/cpu:0"]))


def test_the_classifier_config_learns_digits_and_saves_a_scorer_that_reloads(tmp_path):
  run = _run("classifier_digits", tmp_path, "TRAIN_STEPS = 300", "CosineDecay.decay_steps = 300")
  assert run.last_eval["eval/test_accuracy"] >= 0.9, run.last_eval
  real = classify._real("test", None)  # pylint: disable=protected-access
  scorer = classify.load_scorer(str(tmp_path / "classifier.npz"))
  accuracy = classify._accuracy(scorer, real["x"], real["label"])  # pylint: disable=protected-access
  assert accuracy == run.last_eval["eval/test_accuracy"]


def test_the_gan_config_reports_the_fixed_classifier_score_and_writes_a_grid_of_digits(tmp_path):
  run = _run("gan_digits", tmp_path, "TRAIN_STEPS = 4", "train.eval_every = 2", "train.log_every = 2",
             "digits_gan_quality.per_class = 10")
  final = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
  assert final["update"] == 4 and final == {"update": 4, **run.last_eval}
  assert {"eval/accuracy", "eval/confidence", "eval/classes_drawn", "eval/diversity"} <= set(final)
  assert final["eval/real_accuracy"] >= 0.95  # the shipped scorer on real test digits: the ceiling
  assert sorted(os.listdir(tmp_path / "samples")) == ["eval_samples_000002.png", "eval_samples_000004.png"]
  grid = tf.io.decode_png(open(tmp_path / "samples" / "eval_samples_000004.png", "rb").read()).numpy()
  assert grid.shape == (10 * (8 * 4 + 1) + 1, 10 * (8 * 4 + 1) + 1, 1)  # 10 digits x 10 samples, 8x8 at 4x
  assert len(np.unique(grid)) > 10  # pixels, not a blank canvas
