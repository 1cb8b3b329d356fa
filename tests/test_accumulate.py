"""trainer.accumulate: the pure accumulation over micro-batches."""

import numpy as np
import tensorflow as tf

from trainer.accumulate import accumulate_gradients


def _objective(w):
  def objective(batch):
    loss = tf.reduce_sum(tf.square(tf.linalg.matvec(batch, w) - 1.0))
    return [loss], {"loss": loss, "count": tf.cast(tf.shape(batch)[0], tf.float32)}
  return objective


def test_sum_over_micro_batches_equals_gradient_of_the_sum():
  w = tf.Variable([0.5, -1.0, 2.0])
  unused = tf.Variable([3.0])
  batch = tf.random.stateless_normal([12, 3], seed=[1, 2])
  micro = tf.split(batch, 4)
  grads, figures = tf.function(lambda: accumulate_gradients(_objective(w), [[w, unused]], micro))()
  with tf.GradientTape() as tape:
    (full,), _ = _objective(w)(batch)
  np.testing.assert_allclose(grads[0].numpy(), tape.gradient(full, w).numpy(), rtol=1e-6)
  np.testing.assert_array_equal(grads[1].numpy(), [0.0])  # not reached by the objective: zero, not None
  np.testing.assert_allclose(figures["loss"].numpy(), full.numpy(), rtol=1e-6)
  assert figures["count"].numpy() == 12


def test_one_micro_batch_is_one_gradient_call():
  w = tf.Variable([1.0, 2.0, 3.0])
  batch = tf.ones([2, 3])
  grads, _ = accumulate_gradients(_objective(w), [[w]], [batch])
  np.testing.assert_allclose(grads[0].numpy(), 2 * 2 * (6.0 - 1.0) * np.ones(3))


def test_groups_with_their_own_scalar_get_its_gradient_and_a_shared_scalar_differentiates_both():
  u, v = tf.Variable([1.0, -2.0]), tf.Variable([0.5])
  batch = tf.random.stateless_normal([6, 2], seed=[3, 4])

  def losses(batch):
    fu = tf.reduce_sum(tf.square(tf.linalg.matvec(batch, u)))
    fv = tf.reduce_sum(tf.abs(batch[:, 0] * v[0] - 1.0))
    return fu, fv

  def own(batch):
    fu, fv = losses(batch)
    return [fu, fv], {"fu": fu}

  def shared(batch):
    fu, fv = losses(batch)
    total = fu + fv
    return [total, total], {}

  micro = tf.split(batch, 3)
  separate = tf.function(lambda: accumulate_gradients(own, [[u], [v]], micro))()[0]
  joint = tf.function(lambda: accumulate_gradients(shared, [[u], [v]], micro))()[0]
  with tf.GradientTape(persistent=True) as tape:
    fu, fv = losses(batch)
  np.testing.assert_allclose(separate[0].numpy(), tape.gradient(fu, u).numpy(), rtol=1e-6)
  np.testing.assert_allclose(separate[1].numpy(), tape.gradient(fv, v).numpy(), rtol=1e-6)
  # with separable terms the joint gradient is the same: each group's gradient of the sum is its own term's
  for a, b in zip(joint, separate):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
  # and a crossed objective shows: v's gradient of u's loss is zero, not v's own
  swapped = lambda b: (list(reversed(losses(b))), {})
  crossed = tf.function(lambda: accumulate_gradients(swapped, [[u], [v]], micro))()
  np.testing.assert_array_equal(crossed[0][1].numpy(), [0.0])
