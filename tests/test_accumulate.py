"""trainer.accumulate: the pure accumulation over micro-batches."""

import numpy as np
import tensorflow as tf

from trainer.accumulate import accumulate_gradients


def _objective(w):
  def objective(batch):
    loss = tf.reduce_sum(tf.square(tf.linalg.matvec(batch, w) - 1.0))
    return loss, {"loss": loss, "count": tf.cast(tf.shape(batch)[0], tf.float32)}
  return objective


def test_sum_over_micro_batches_equals_gradient_of_the_sum():
  w = tf.Variable([0.5, -1.0, 2.0])
  unused = tf.Variable([3.0])
  batch = tf.random.stateless_normal([12, 3], seed=[1, 2])
  micro = tf.split(batch, 4)
  grads, figures = tf.function(lambda: accumulate_gradients(_objective(w), [w, unused], micro))()
  with tf.GradientTape() as tape:
    full, _ = _objective(w)(batch)
  np.testing.assert_allclose(grads[0].numpy(), tape.gradient(full, w).numpy(), rtol=1e-6)
  np.testing.assert_array_equal(grads[1].numpy(), [0.0])  # not reached by the objective: zero, not None
  np.testing.assert_allclose(figures["loss"].numpy(), full.numpy(), rtol=1e-6)
  assert figures["count"].numpy() == 12


def test_one_micro_batch_is_one_gradient_call():
  w = tf.Variable([1.0, 2.0, 3.0])
  batch = tf.ones([2, 3])
  grads, _ = accumulate_gradients(_objective(w), [w], [batch])
  np.testing.assert_allclose(grads[0].numpy(), 2 * 2 * (6.0 - 1.0) * np.ones(3))
