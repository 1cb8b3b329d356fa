"""trainer.precision: dtype policies per model and float16 loss scaling decided on the reduced gradient."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from tests.processes import checkpoint_state, run
from trainer import precision
from trainer.errors import UserError
from trainer.tasks import regression

G = 16  # global batch; at 2 replicas, replica 1 reads examples [8, 16) of every micro-batch


def _overflow_on_replica_1_in_window(window):
  """MSE, plus 1e6 * prediction on replica 1's examples of window `window` (0-based) only: a finite loss whose
  float16 gradient overflows at any scale above ~1e-3 there, and only there."""
  def examples(indices):
    bad = (indices >= window * G + G // 2) & (indices < (window + 1) * G)
    return {**regression.regression_examples(indices), "bad": tf.cast(bad, tf.float32)}

  def loss(models, batch, model):
    prediction = tf.cast(models[model](batch["x"], training=True), tf.float32)[:, 0]
    return {"loss": tf.square(prediction - batch["y"][:, 0]) + 1e6 * batch["bad"] * prediction}
  return {"examples": examples, "losses": {"a": loss, "b": regression.absolute_error}}


def test_an_overflow_on_one_replica_skips_the_window_on_every_replica(tmp_path):
  gin.bind_parameter("LossScale.initial_scale", 1024.0)
  kwargs = dict(replicas=2, global_batch_size=G, cycle=[("a", 1)], precision={"a": "mixed_float16"},
                **_overflow_on_replica_1_in_window(3))
  skipped = toy.run(tmp_path / "skipped", train_steps=4, log_every=4, **kwargs)
  before = toy.run(tmp_path / "before", train_steps=3, **kwargs)
  assert toy.max_diff(toy.weights(skipped), toy.weights(before)) == 0  # the 4th window changed no weight ...
  assert int(skipped.optimizers["a"].iterations.numpy()) == 3  # ... nor the optimizer's count
  for v in skipped.models["a"].trainable_variables:  # and both replicas hold the same weights
    np.testing.assert_array_equal(*[np.array(x) for x in v.value.values])
  state = checkpoint_state(tmp_path / "skipped")
  assert state["loss_scale_a/scale/.ATTRIBUTES/VARIABLE_VALUE"] == 512.0  # halved
  assert skipped.last_log["a/skipped"] == 0.25 and skipped.last_log["a/loss_scale"] == (3 * 1024 + 1024) / 4


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_the_loss_scale_grows_after_good_windows_and_resumes_bit_for_bit(tmp_path):
  gin.bind_parameter("LossScale.initial_scale", 1024.0)
  gin.bind_parameter("LossScale.growth_steps", 2)
  kwargs = dict(replicas=2, global_batch_size=G, cycle=[("a", 1), ("b", 1)], train_steps=10, checkpoint_every=3,
                precision="mixed_float16", **_overflow_on_replica_1_in_window(2))
  whole = toy.run(tmp_path / "whole", **kwargs)
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 5})
  resumed = toy.run(tmp_path / "split", **kwargs)
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0
  state, split = checkpoint_state(tmp_path / "whole"), checkpoint_state(tmp_path / "split")
  assert state.keys() == split.keys() and all(np.array_equal(state[n], split[n]) for n in state)
  # 'a' trains windows 0, 2, 4, 6, 8: window 2 overflows (1024 -> 512), then 2 good ones (-> 1024), 1 more
  assert state["loss_scale_a/scale/.ATTRIBUTES/VARIABLE_VALUE"] == 1024.0
  assert state["loss_scale_b/scale/.ATTRIBUTES/VARIABLE_VALUE"] == 1024.0 * 2 ** 2  # 5 good: doubled twice


@pytest.mark.slow
def test_bfloat16_and_float16_models_train_a_regression_to_the_noise_floor(tmp_path):
  for policy in ("mixed_bfloat16", "mixed_float16"):
    result = run("-m", "trainer.main", "--gin_file=configs/seed_alternating.gin", f"--model_dir={tmp_path / policy}",
                 "--gin_bindings=TRAIN_STEPS=600", f"--gin_bindings=train.precision='{policy}'",
                 "--gin_bindings=train.eval_every=0")
    assert result.returncode == 0, result.stderr[-2000:]
    last = [line for line in open(tmp_path / policy / "metrics.jsonl") if "eval/a/mse" in line][-1]
    assert '"eval/a/mse": 0.0' in last  # < 0.1: the noise floor is 0.01, an untrained model ~15


def test_policies_per_model_and_their_errors():
  assert precision.policies("mixed_bfloat16", ["a", "b"]) == {"a": "mixed_bfloat16", "b": "mixed_bfloat16"}
  assert precision.policies({"b": "mixed_float16"}, ["a", "b"]) == {"a": "float32", "b": "mixed_float16"}
  with pytest.raises(UserError, match="train.precision for 'a' is 'float16'; choose one of float32, mixed_float16"):
    precision.policies("float16", ["a"])
  with pytest.raises(UserError, match="names model 'c', which is not in train.models"):
    precision.policies({"c": "float32"}, ["a"])


@pytest.mark.slow
def test_a_joint_phase_scales_by_its_smallest_float16_scale_and_an_overflow_skips_it_for_every_model(tmp_path):
  gin.bind_parameter("LossScale.initial_scale", 1024.0)
  gin.bind_parameter("LossScale.growth_steps", 1)  # every good window doubles the scales it used

  def loss(models, batch, trains):  # the overflow of _overflow_on_replica_1_in_window, through both models
    prediction = tf.add_n([tf.cast(models[m](batch["x"], training=True), tf.float32)[:, 0] for m in trains])
    return {"loss": tf.square(prediction - batch["y"][:, 0]) + 1e6 * batch["bad"] * prediction}

  kwargs = dict(replicas=2, global_batch_size=G, cycle=[("ab", 1)], precision={"a": "mixed_float16", "b":
                "mixed_float16"}, examples=_overflow_on_replica_1_in_window(3)["examples"],
                phases=toy.phases(ab=(("a", "b"), loss)), warmup=[("a", 1)], losses={"a": regression.squared_error})
  skipped = toy.run(tmp_path / "skipped", train_steps=4, log_every=4, **kwargs)
  before = toy.run(tmp_path / "before", train_steps=3, **kwargs)
  assert toy.max_diff(toy.weights(skipped), toy.weights(before)) == 0  # the joint window changed no weight
  assert [int(skipped.optimizers[n].iterations.numpy()) for n in "ab"] == [3, 2]
  state = checkpoint_state(tmp_path / "skipped")
  # a: 1024 -> 2048 (warm-up) -> 4096 -> 8192 -> 4096 (the overflow); b: 1024 -> 2048 -> 4096 -> 2048
  assert state["loss_scale_a/scale/.ATTRIBUTES/VARIABLE_VALUE"] == 4096.0
  assert state["loss_scale_b/scale/.ATTRIBUTES/VARIABLE_VALUE"] == 2048.0
  # the joint windows used the smaller scale, b's: 1024, 2048, 4096
  assert skipped.last_log["ab/loss_scale"] == (1024 + 2048 + 4096) / 3 and skipped.last_log["ab/skipped"] == 1 / 3
