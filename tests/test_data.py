"""trainer.data: per-example randomness and the index-addressed per-replica stream."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import data
from trainer.errors import UserError


def test_random_numbers_depend_only_on_seed_index_and_stream():
  idx = tf.range(100, 200, dtype=tf.int64)
  whole = data.normal(idx, (3,), seed=7).numpy()
  parts = np.concatenate([data.normal(idx[:37], (3,), 7).numpy(), data.normal(idx[37:], (3,), 7).numpy()])
  np.testing.assert_array_equal(whole, parts)
  assert not np.allclose(whole, data.normal(idx, (3,), seed=8).numpy())
  assert not np.allclose(whole, data.normal(idx, (3,), seed=7, stream=1).numpy())


def test_uniform_and_normal_have_the_right_moments():
  idx = tf.range(200_000, dtype=tf.int64)
  u = data.uniform(idx, (), seed=1).numpy()
  z = data.normal(idx, (), seed=1).numpy()
  assert 0 < u.min() and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.005 and abs(u.std() - 12 ** -0.5) < 0.005
  assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbouring indices are independent


def _indices(pipeline: int, pipelines: int, replicas: int, global_batch: int, start: int, elements: int,
             chunk_bytes: int = 1 << 20):
  context = tf.distribute.InputContext(pipelines, pipeline, replicas)
  ds = data.micro_batch_dataset(lambda i: i, context, global_batch, start, chunk_bytes=chunk_bytes)
  return [x.numpy() for x in ds.take(elements)]


# elements of 2 int64 indices (16 bytes): 1, 3 and MAX_CHUNK (16) of them per call of the examples function
@pytest.mark.parametrize("chunk_bytes", [0, 48, 1 << 20])
def test_replicas_of_a_micro_batch_cover_its_global_examples_exactly_once(chunk_bytes):
  # 2 pipelines (workers) x 2 local replicas, global batch 8, starting at micro-batch 5.
  p0 = _indices(0, 2, 4, 8, start=5, elements=8, chunk_bytes=chunk_bytes)
  p1 = _indices(1, 2, 4, 8, start=5, elements=8, chunk_bytes=chunk_bytes)
  for m in range(4):  # each pipeline yields its 2 replicas' shares of micro-batch 5 + m, in replica order
    shares = [p0[2 * m], p0[2 * m + 1], p1[2 * m], p1[2 * m + 1]]
    np.testing.assert_array_equal(np.concatenate(shares), np.arange(8 * (5 + m), 8 * (6 + m)))


def test_small_micro_batches_are_made_several_per_call_and_large_or_unknown_ones_one_per_call():
  spec = lambda shape, dtype=tf.float32: {"x": tf.TensorSpec(shape, dtype), "index": tf.TensorSpec([64], tf.int64)}
  assert data.chunk_micro_batches(spec([64, 2]), 1 << 20) == data.MAX_CHUNK  # the small job: 1 KiB each
  assert data.chunk_micro_batches(spec([64, 256]), 1 << 20) == 15  # 64.5 KiB each
  assert data.chunk_micro_batches(spec([64, 64, 64, 3]), 1 << 20) == 1  # 3 MiB images: one per call, as before
  assert data.chunk_micro_batches(spec([64, None]), 1 << 20) == 1
  assert data.chunk_micro_batches(spec([64], tf.string), 1 << 20) == 1
  assert data.chunk_micro_batches(spec([64, 2]), 0) == 1


def test_a_batch_of_another_length_than_its_indices_is_named():
  context = tf.distribute.InputContext()
  with pytest.raises(UserError, match=r"returned a tensor of shape \(1, 2\) for 32 indices; every tensor of its "
                     "batch must have one row per index"):
    data.micro_batch_dataset(lambda i: {"x": tf.zeros([1, 2])}, context, 2, 0)


def test_one_replica_sees_the_same_examples():
  np.testing.assert_array_equal(_indices(0, 1, 1, 8, start=5, elements=1)[0], np.arange(40, 48))
