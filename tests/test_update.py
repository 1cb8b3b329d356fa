"""trainer.update: the per-replica update equals Keras's own apply_gradients, option for option."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import update
from trainer.errors import UserError

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
