"""trainer.update: the per-replica update equals Keras's own apply_gradients, option for option."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from trainer import update
from trainer.errors import TrainingFailed, UserError
from trainer.tasks import regression

OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01),
    "adam_ema": lambda: keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.9),
    "adam_ema_overwrite": lambda: keras.optimizers.Adam(0.01, use_ema=True, ema_overwrite_frequency=3),
    "sgd_global_clipnorm": lambda: keras.optimizers.SGD(0.05, global_clipnorm=0.5),
    "adam_clipnorm": lambda: keras.optimizers.Adam(0.01, clipnorm=0.2),
    "sgd_clipvalue": lambda: keras.optimizers.SGD(0.05, clipvalue=0.1),
    "adam_schedule": lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 2, 0.5)),
}


def _variables():
  keras.utils.set_random_seed(1)
  return [keras.Variable(np.random.normal(size=shape).astype("float32")) for shape in ((4, 3), (3,))]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_replica_update_equals_keras_apply_gradients(name):
  ours, theirs = _variables(), _variables()
  mine, keras_own = OPTIMIZERS[name](), OPTIMIZERS[name]()
  mine.build(ours)
  keras_own.build(theirs)

  @tf.function(jit_compile=True)
  def step(grads):
    update.apply(mine, update.clip(mine, grads, tf.linalg.global_norm(grads)), ours)

  rng = np.random.default_rng(0)
  for _ in range(7):
    grads = [tf.constant(rng.normal(size=v.shape), tf.float32) for v in ours]
    step(grads)
    mine.iterations.assign_add(1)  # the caller's job, in cross-replica context
    keras_own.apply_gradients(zip(grads, theirs))
  for a, b in zip([*ours, *mine.variables], [*theirs, *keras_own.variables]):
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, rtol=0)
  assert int(mine.iterations.numpy()) == 7


def test_clipping_by_the_global_norm_binds_on_the_summed_gradient():
  optimizer = keras.optimizers.SGD(1.0, global_clipnorm=1.0)
  grads = [tf.constant([3.0, 4.0]), tf.constant([0.0])]
  clipped = update.clip(optimizer, grads, tf.linalg.global_norm(grads))
  np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("optimizer, message", [
    (keras.optimizers.Adam(gradient_accumulation_steps=2), "gradient_accumulation_steps; accumulate with the "
                                                          "schedule's micro_batches"),
    (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), r"\(LossScaleOptimizer\) overrides .*apply.*"
                                                                  r"PhaseLoop.replica_update = False"),
])
def test_what_cannot_be_applied_per_replica_is_refused_with_what_to_do(optimizer, message):
  with pytest.raises(UserError, match=message):
    update.check("m", optimizer)


def test_keras_apply_after_the_all_reduce_refuses_clipping():
  with pytest.raises(UserError, match="sets global_clipnorm, which PhaseLoop.replica_update = False cannot honour"):
    update.check_keras_apply("m", keras.optimizers.SGD(global_clipnorm=1.0))


def _bn_mlp(name, synchronized=False):
  inputs = keras.Input((4,))
  x = keras.layers.BatchNormalization(name=f"{name}_bn0", synchronized=synchronized)(
      keras.layers.Dense(8, name=f"{name}_dense")(inputs))
  x = keras.layers.BatchNormalization(name=f"{name}_bn1")(keras.layers.ReLU()(x))
  return keras.Model(inputs, keras.layers.Dense(1, name=f"{name}_out")(x), name=name)


def _bn_run(model_dir, **kwargs):
  return toy.run(model_dir, cycle=[("a", 1, 2)], models={n: functools.partial(_bn_mlp, n) for n in "ab"}, **kwargs)


def _replica_copies(variable):
  return [np.array(v) for v in getattr(variable.value, "values", [variable.value])]


def test_batchnorm_trains_at_1_and_2_replicas_with_moving_statistics_equal_on_every_replica(tmp_path):
  # Checked to fail with set_moving_statistics a no-op: each replica then keeps the statistics of its own examples.
  runs = {replicas: _bn_run(tmp_path / f"r{replicas}", replicas=replicas, train_steps=3) for replicas in (1, 2)}
  for replicas, run in runs.items():
    statistics = update.moving_statistics(run.models["a"])
    assert len(statistics) == 4 and np.isfinite(run.last_log["a/loss"])
    for variable in statistics:
      copies = _replica_copies(variable)
      assert len(copies) == replicas and all(np.array_equal(copies[0], c) for c in copies)
    assert np.abs(np.array(run.models["a"].get_layer("a_bn0").moving_mean)).max() > 1e-3  # moved from 0
    saved = dict(tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path / f"r{replicas}" / "checkpoints"))))
    assert sum("moving_mean" in name or "moving_variance" in name for name in saved) == 8  # both models' layers
  # 2 replicas average per-replica statistics (ghost batch norm of G / 2 per micro-batch): not the 1-replica run's
  variances = [np.array(runs[r].models["a"].get_layer("a_bn0").moving_variance) for r in (1, 2)]
  assert np.abs(variances[0] - variances[1]).max() > 1e-6


@pytest.mark.slow  # a longer run: the fast tier stays under 5 minutes
def test_a_resumed_batchnorm_run_at_2_replicas_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
  whole = _bn_run(tmp_path / "whole", replicas=2, train_steps=2)
  _bn_run(tmp_path / "parts", replicas=2, train_steps=1)
  resumed = _bn_run(tmp_path / "parts", replicas=2, train_steps=2)
  for a, b in zip(whole.models["a"].variables, resumed.models["a"].variables):  # weights and moving statistics
    np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("replicas", [1, 2])  # the window and update as one program, and as two around the all-reduce
def test_a_window_that_stops_the_run_leaves_the_batchnorm_statistics_of_the_update_before_it(tmp_path, replicas):
  def examples(indices):  # 32 examples per update (16 x K=2): update 2's inputs are NaN
    batch = regression.regression_examples(indices)
    return {"x": tf.where(indices[:, None] >= 32, np.nan, batch["x"]), "y": batch["y"]}

  with pytest.raises(TrainingFailed, match=r"at update 2 .*saved as .*ckpt-1"):
    _bn_run(tmp_path / "nan", replicas=replicas, train_steps=3, examples=examples)
  _bn_run(tmp_path / "good", replicas=replicas, train_steps=1)
  saved, good = (tf.train.load_checkpoint(str(tmp_path / d / "checkpoints")) for d in ("nan", "good"))
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "good" / "checkpoints")) if "moving_" in n]
  assert len(names) == 8  # both models' 2 layers' means and variances
  for name in names:  # bit for bit those of the run that stopped after update 1 (were NaN before the fix)
    np.testing.assert_array_equal(saved.get_tensor(name), good.get_tensor(name))


def test_synchronized_batchnorm_is_refused_where_its_all_reduce_cannot_run():
  model = _bn_mlp("a", synchronized=True)
  with pytest.raises(UserError, match=r"^model 'a' has BatchNormalization\(synchronized=True\) \(a_bn0\), which "
                                      r"needs PhaseLoop.jit_compile = False and 1 micro-batch per update"):
    update.check_model("a", model, jit_compile=True, micro_batches=1)
  with pytest.raises(UserError):
    update.check_model("a", model, jit_compile=False, micro_batches=2)
  update.check_model("a", model, jit_compile=False, micro_batches=1)
