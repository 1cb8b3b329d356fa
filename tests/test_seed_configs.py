"""The seed article's three jobs (configs/seed_*.gin): each checks what the article got wrong."""

import os

import numpy as np
import pytest
import tensorflow as tf

from trainer import config, train
from trainer.tasks import regression

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, model_dir, *bindings):
  config.parse([os.path.join(REPO, "configs", f"{name}.gin")], ["train.evaluate = None", *bindings])
  return train.train(str(model_dir), tf.distribute.MirroredStrategy(["/cpu:0"]))


def _state(run, name):
  return ([np.array(v) for v in run.models[name].trainable_variables]
          + [np.array(v) for v in run.optimizers[name].variables])


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_alternating_each_update_trains_one_model_and_leaves_the_other_bit_for_bit(tmp_path):
  before = _run("seed_alternating", tmp_path, "TRAIN_STEPS = 2")  # a, b
  a_before, b_before = _state(before, "a"), _state(before, "b")
  after = _run("seed_alternating", tmp_path, "TRAIN_STEPS = 3")  # resumes: update 3 trains a only
  for x, y in zip(b_before, _state(after, "b")):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(a_before, _state(after, "a")))
  assert [int(after.optimizers[n].iterations.numpy()) for n in "ab"] == [2, 1]


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_round_robin_accumulates_per_update_not_per_epoch(tmp_path):
  accumulated = _run("seed_round_robin", tmp_path / "k4", "TRAIN_STEPS = 6")
  assert [int(accumulated.optimizers[n].iterations.numpy()) for n in "abc"] == [2, 2, 2]  # one apply per window
  assert {key[1] for key in accumulated.loops} == {4}
  # 4 micro-batches of 64 per update == one batch of 256, with each model's Adam.
  one_batch = _run("seed_round_robin", tmp_path / "k1", "TRAIN_STEPS = 6", "Schedule.micro_batches = 1",
                   "GLOBAL_BATCH_SIZE = 256")
  for n in "abc":
    for x, y in zip(accumulated.models[n].trainable_variables, one_batch.models[n].trainable_variables):
      assert np.max(np.abs(np.array(x) - np.array(y))) <= 1e-6


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_two_losses_each_model_logs_its_own_loss_and_uses_its_own_optimizer(tmp_path):
  run = _run("seed_two_losses", tmp_path, "TRAIN_STEPS = 2", "train.log_every = 2")
  assert type(run.optimizers["a"]).__name__ == "Adam" and type(run.optimizers["b"]).__name__ == "SGD"
  assert [int(run.optimizers[n].iterations.numpy()) for n in "ab"] == [1, 1]
  # Update 1 trains a on examples 0..63 with MSE; update 2 trains b on 64..127 with MAE: recompute both from the
  # initial models (b's weights are still initial at update 2; a's initial weights come from a run training b).
  initial_a = _run("seed_two_losses", tmp_path / "b_first", "TRAIN_STEPS = 1",
                   "Schedule.cycle = [('b', 1), ('a', 1)]").models["a"]
  first, second = (regression.regression_examples(tf.range(s, s + 64, dtype=tf.int64)) for s in (0, 64))
  b_initial = _run("seed_two_losses", tmp_path / "a_only", "TRAIN_STEPS = 1").models["b"]
  mse = float(tf.reduce_mean(tf.square(initial_a(first["x"]) - first["y"])))
  mae = float(tf.reduce_mean(tf.abs(b_initial(second["x"]) - second["y"])))
  assert run.last_log["a/loss"] == pytest.approx(mse, rel=1e-5)
  assert run.last_log["b/loss"] == pytest.approx(mae, rel=1e-5)
