"""trainer.train: resume, artifacts, non-finite losses, damaged checkpoints, input validation."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from trainer.tasks import regression
from trainer.errors import TrainingFailed, UserError


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
  kwargs = dict(cycle=[("a", 3, 2), ("b", 2)], train_steps=14, checkpoint_every=4)
  whole = toy.run(tmp_path / "whole", **kwargs)
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 9})  # stops mid-phase, mid-cycle
  resumed = toy.run(tmp_path / "split", **kwargs)
  assert resumed.update == 14
  for n in "ab":
    for a, b in zip(toy.weights(whole)[n], toy.weights(resumed)[n]):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(whole.optimizers[n].variables, resumed.optimizers[n].variables):
      np.testing.assert_array_equal(np.array(a), np.array(b))


def test_writes_checkpoints_summaries_and_metrics(tmp_path):
  toy.run(tmp_path, cycle=[("a", 2), ("b", 1)], train_steps=9, log_every=3, checkpoint_every=6)
  manager_files = os.listdir(tmp_path / "checkpoints")
  assert {"ckpt-6.index", "ckpt-9.index", "checkpoint"} <= set(manager_files)
  assert tf.io.gfile.glob(str(tmp_path / "summaries" / "events.out.tfevents.*"))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["update"] for r in records] == [3, 6, 9]
  for r in records:
    assert r["examples_per_sec"] > 0 and "a/loss" in r and "b/loss" in r
    assert r["phase"] in ("a", "b") and r["total_updates"] == 9


def test_logged_loss_is_the_mean_over_the_global_window(tmp_path):
  run = toy.run(tmp_path / "run", replicas=2, cycle=[("a", 1, 2)], train_steps=1, global_batch_size=8, log_every=1)
  # By hand: the initial model 'a' (same seed; only 'b' trains here) on the window's 16 examples.
  untrained = toy.run(tmp_path / "untrained", cycle=[("b", 1)], train_steps=1).models["a"]
  batch = regression.regression_examples(tf.range(16, dtype=tf.int64))
  expected = float(tf.reduce_mean(tf.square(untrained(batch["x"]) - batch["y"])))
  np.testing.assert_allclose(run.last_log["a/loss"], expected, rtol=1e-5)
  # ... and that is the value written to metrics.jsonl and to TensorBoard, not only the returned one
  record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
  np.testing.assert_allclose(record["a/loss"], expected, rtol=1e-5)
  events = tf.io.gfile.glob(str(tmp_path / "run" / "summaries" / "events.out.tfevents.*"))
  scalars = {v.tag: float(tf.make_ndarray(v.tensor)) for e in tf.compat.v1.train.summary_iterator(events[0])
             for v in e.summary.value}
  np.testing.assert_allclose(scalars["a/loss"], expected, rtol=1e-5)


def _nan_after(limit):
  def examples(indices):
    batch = regression.regression_examples(indices)
    return {"x": batch["x"], "y": tf.where(indices[:, None] >= limit, np.nan, batch["y"])}
  return examples


def test_non_finite_loss_stops_before_the_update_and_keeps_the_good_state(tmp_path):
  # Examples 96.. are NaN: with 16 per update, update 7 is the first bad one.
  with pytest.raises(TrainingFailed, match=r"non-finite .* at update 7 \(phase 'a'.*a/loss=nan.*ckpt-6"):
    toy.run(tmp_path, cycle=[("a", 1)], train_steps=20, examples=_nan_after(96), checkpoint_every=4)
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-6"))
  for name in reader.get_variable_to_shape_map():
    if name.startswith("model_a") or name.startswith("optimizer_a"):
      assert np.all(np.isfinite(reader.get_tensor(name))), name
  assert reader.get_tensor("update/.ATTRIBUTES/VARIABLE_VALUE") == 6
  assert os.path.exists(tmp_path / "checkpoints" / "ckpt-4.index")  # the older good checkpoint is kept too


def test_damaged_checkpoint_gives_a_clear_error(tmp_path):
  toy.run(tmp_path, train_steps=4, checkpoint_every=2)
  data_file = tf.io.gfile.glob(str(tmp_path / "checkpoints" / "ckpt-4.data-*"))[0]
  with open(data_file, "r+b") as f:
    f.truncate(10)
  with pytest.raises(UserError, match=r"cannot restore checkpoint .*ckpt-4 .*delete its files .*ckpt-2"):
    toy.run(tmp_path, train_steps=8)


def test_checkpoint_of_other_models_is_refused(tmp_path):
  toy.run(tmp_path, train_steps=2)
  with pytest.raises(UserError, match="cannot restore checkpoint"):
    toy.run(tmp_path, train_steps=4, models={"a": lambda: _wider("a"), "b": lambda: _wider("b")})


def _wider(name, width=9):
  from trainer.tasks import models
  return models.mlp(input_dim=4, output_dim=1, hidden=(width,), name=name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cycle=[("z", 1)]), r"names 'z', which is neither a phase of train.phases nor a model of train.models \(a, b, c\)"),
    (dict(cycle=[("aa", 1)]), r"did you mean 'a'"),
    (dict(train_steps=0), r"TRAIN_STEPS.* must be a positive integer, got 0"),
    (dict(global_batch_size=-4), r"GLOBAL_BATCH_SIZE.* must be a positive integer"),
    (dict(replicas=2, global_batch_size=15), r"GLOBAL_BATCH_SIZE=15 does not divide over 2 replicas"),
    (dict(models={"a": lambda: _wider("a", 0)}),
     r"^train.models\['a'\] cannot be built: .*units.*; change the bindings of its builder \(e.g. a/mlp.hidden\)"),
])
def test_bad_input_is_refused_with_what_to_change(tmp_path, kwargs, message):
  with pytest.raises(UserError, match=message):
    toy.run(tmp_path, **kwargs)


def test_unwritable_model_dir(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="is not writable"):
    toy.run(tmp_path / "file" / "run")


def _finite_loss_nan_gradient_after(limit):
  """MSE, plus sqrt(|u|) with u = 0 on examples >= `limit`: the loss stays finite there, its gradient is NaN
  (d sqrt(u)/du = inf, times d|u|/du = 0 at u = 0). Elsewhere u = 1 and the added term is a constant."""
  def examples(indices):
    return {**regression.regression_examples(indices), "bad": tf.cast(indices >= limit, tf.float32)}

  def loss(models, batch, model):
    prediction = models[model](batch["x"], training=True)[:, 0]
    u = tf.abs(prediction - tf.stop_gradient(prediction)) + (1.0 - batch["bad"])
    return {"loss": tf.square(prediction - batch["y"][:, 0]) + tf.sqrt(u) - (1.0 - batch["bad"])}
  return examples, loss


def test_a_non_finite_gradient_of_a_finite_loss_stops_before_the_update(tmp_path):
  examples, loss = _finite_loss_nan_gradient_after(96)  # with 16 per update, update 7 is the first bad one
  with pytest.raises(TrainingFailed, match=r"non-finite .* at update 7 \(phase 'a': a/loss=\d.*ckpt-6") as error:
    toy.run(tmp_path, cycle=[("a", 1)], train_steps=20, examples=examples, checkpoint_every=4,
            losses={"a": loss, "b": regression.absolute_error})
  assert error.value.exit_code == 3
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
  assert reader.get_tensor("update/.ATTRIBUTES/VARIABLE_VALUE") == 6
  for name in reader.get_variable_to_shape_map():
    if name.startswith(("model_a", "optimizer_a")):
      assert np.all(np.isfinite(reader.get_tensor(name))), name


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_a_warmup_that_is_not_a_multiple_of_the_cycle_trains_and_resumes_inside_it(tmp_path):
  kwargs = dict(warmup=[("a", 3)], cycle=[("a", 1), ("b", 1)], train_steps=9, steps_per_loop=8)
  whole = toy.run(tmp_path / "whole", **kwargs)
  assert [int(whole.optimizers[n].iterations.numpy()) for n in "ab"] == [6, 3]
  # a a a | a b | a b | a b is also warm-up a x 4, then b : a; the same updates on the same data, bit for bit
  same = toy.run(tmp_path / "same", **{**kwargs, "warmup": [("a", 4)], "cycle": [("b", 1), ("a", 1)]})
  assert toy.max_diff(toy.weights(whole), toy.weights(same)) == 0
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 2})  # stops inside the warm-up
  resumed = toy.run(tmp_path / "split", **kwargs)
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_resume_at_two_replicas_with_k_micro_batches_continues_the_data_exactly(tmp_path):
  kwargs = dict(replicas=2, cycle=[("a", 2, 3), ("b", 1, 2)], train_steps=8, checkpoint_every=4)
  whole = toy.run(tmp_path / "whole", **kwargs)
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 5})  # mid-phase: the next 'a' window starts at 13
  resumed = toy.run(tmp_path / "split", **kwargs)
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0


def test_evaluation_uses_the_moving_average_and_training_continues_from_the_raw_weights(tmp_path):
  seen = []

  def evaluate(models):
    seen.append([np.array(v) for v in models["a"].trainable_variables])
    return {"x": 0.0}

  ema = lambda: keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5)
  kwargs = dict(cycle=[("a", 1)], train_steps=6, optimizers={"a": ema, "b": ema})
  evaluated = toy.run(tmp_path / "evaluated", evaluate=evaluate, eval_every=3, **kwargs)
  optimizer = evaluated.optimizers["a"]
  averages = [np.array(v) for v in optimizer._model_variables_moving_average]  # pylint: disable=protected-access
  for a, b in zip(seen[-1], averages):  # the last evaluation (update 6) saw the averages ...
    np.testing.assert_array_equal(a, b)
  assert toy.max_diff({"a": seen[-1]}, {"a": toy.weights(evaluated)["a"]}) > 1e-4  # ... not the raw weights
  plain = toy.run(tmp_path / "plain", **kwargs)  # and the evaluations changed nothing in training
  assert toy.max_diff(toy.weights(plain), toy.weights(evaluated)) == 0
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 4})
  resumed = toy.run(tmp_path / "split", **kwargs)  # the averages are in the checkpoint: resume is bit for bit
  for a, b in zip(plain.optimizers["a"].variables, resumed.optimizers["a"].variables):
    np.testing.assert_array_equal(np.array(a), np.array(b))
