"""Input pipelines in which every example is a pure function of its global index.

Micro-batch `m` is global examples `[m * G, (m + 1) * G)` (G = global batch size), and replica `r` of R takes the
slice `[m * G + r * G / R, m * G + (r + 1) * G / R)`. Hence:
  * the examples of an accumulation window do not depend on the replica or worker count, so 1 replica and N
    replicas compute the same window gradient (replica invariance);
  * resuming at micro-batch `m` is O(1): the pipeline simply starts there (a distributed iterator cannot be
    checkpointed, tensorflow#56372);
  * every random number of a step (GAN latents, interpolation weights) can come from here, keyed by
    (seed, example index, stream), so it too is independent of how the batch is split.
"""

import math
from typing import Any, Callable

import gin
import tensorflow as tf

from trainer.errors import UserError
from trainer.strategy import replicas_on_cpu

ExamplesFn = Callable[[tf.Tensor], Any]
"""Maps a vector of global example indices (int64, shape [b]) to a batch: a nest of tensors with leading dim b."""

_GOLDEN = 0x9E3779B97F4A7C15
INDEX = "index"  # the key under which a dict batch carries its global example indices (see with_index)


def _splitmix64(x: tf.Tensor) -> tf.Tensor:
  """The splitmix64 finaliser (Steele et al. 2014): a bijective, well-mixed hash of uint64 counters."""
  u64 = lambda c: tf.constant(c, tf.uint64)
  x = x + u64(_GOLDEN)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(30))) * u64(0xBF58476D1CE4E5B9)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(27))) * u64(0x94D049BB133111EB)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(31)))


def uniform(indices: tf.Tensor, shape: tuple[int, ...], seed: int, stream: int = 0) -> tf.Tensor:
  """Uniform floats in (0, 1), shape [b, *shape]: a pure function of (seed, stream, example index, position)."""
  size = math.prod(shape)
  key = _splitmix64(tf.constant([(seed * 1_000_003 + stream) % 2**64], tf.uint64))
  counters = tf.cast(indices[:, None] * size + tf.range(size, dtype=tf.int64), tf.uint64)
  bits = _splitmix64(tf.bitwise.bitwise_xor(counters, key))
  # The top 53 bits make an exactly representable double; +0.5 keeps it away from 0 and 1.
  u = (tf.cast(tf.bitwise.right_shift(bits, tf.constant(11, tf.uint64)), tf.float64) + 0.5) / 2.0**53
  return tf.reshape(tf.cast(u, tf.float32), [-1, *shape])


def normal(indices: tf.Tensor, shape: tuple[int, ...], seed: int, stream: int = 0) -> tf.Tensor:
  """Standard normal floats, shape [b, *shape], keyed like `uniform` (Box-Muller on two uniform streams)."""
  u1 = tf.cast(uniform(indices, shape, seed, 2 * stream), tf.float64)
  u2 = tf.cast(uniform(indices, shape, seed, 2 * stream + 1), tf.float64)
  z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
  return tf.cast(z, tf.float32)


MAX_CHUNK = 16  # micro-batches per call of the examples function; more gained nothing measurable


@gin.configurable(allowlist=["chunk_bytes"])
def micro_batch_dataset(
    examples: ExamplesFn, context: tf.distribute.InputContext, global_batch_size: int, start: int,
    chunk_bytes: int = 1 << 20,
) -> tf.data.Dataset:
  """The endless stream of this input pipeline's per-replica micro-batches, from global micro-batch `start`.

  The pipeline feeds its `L` local replicas round-robin (what tf.distribute does with consecutive elements), so
  its element `j` is micro-batch `start + j // L` for global replica `pipeline_id * L + j % L`.

  Small micro-batches are made C at a time: `examples` is called on the indices of C consecutive elements and its
  batch cut into C elements, C as many (up to MAX_CHUNK) as fit in `chunk_bytes`. A tf.data map call costs tens
  of microseconds whatever its size, which decides the speed of small models (docs/performance.md); large
  micro-batches (C = 1) are made one per call as before, so memory in flight stays bounded. Every example is a
  function of its own index, so the elements are the same for any C.
  """
  per_replica = context.get_per_replica_batch_size(global_batch_size)
  local = context.num_replicas_in_sync // context.num_input_pipelines
  first_replica = context.input_pipeline_id * local

  def indices(j):  # j: a vector of element numbers
    micro_batch = start + j // local
    replica = first_replica + j % local
    first = micro_batch * global_batch_size + replica * per_replica
    return tf.reshape(first[:, None] + tf.range(per_replica, dtype=tf.int64)[None, :], [-1])

  def pipeline(chunk, make):
    # Infinite and fixed-shape: tf.distribute knows there are no partial batches and adds no sync per next().
    # (counter(), not range(2**62): a finite cardinality makes MultiWorkerMirroredStrategy all-reduce per next().)
    return (tf.data.Dataset.counter()
            .map(lambda c: indices(c * chunk + tf.range(chunk, dtype=tf.int64)))
            .map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))

  single = pipeline(1, lambda i: with_index(examples(i), i))
  chunk = chunk_micro_batches(single.element_spec, chunk_bytes)
  if chunk == 1:
    return single.prefetch(tf.data.AUTOTUNE)

  def make(i):
    return tf.nest.map_structure(lambda x: _cut(x, chunk, per_replica), with_index(examples(i), i))

  return pipeline(chunk, make).unbatch().prefetch(tf.data.AUTOTUNE)


def chunk_micro_batches(element_spec: Any, chunk_bytes: int) -> int:
  """How many micro-batches of `element_spec` one call of the examples function makes: as many as fit in
  `chunk_bytes`, from 1 to MAX_CHUNK; 1 when their size is not known before they are made (a dimension, strings)."""
  specs = tf.nest.flatten(element_spec)
  if any(s.shape.num_elements() is None or s.dtype == tf.string for s in specs):
    return 1
  size = sum(s.shape.num_elements() * s.dtype.size for s in specs)
  return max(1, min(MAX_CHUNK, chunk_bytes // max(size, 1)))


def _cut(x: tf.Tensor, chunk: int, per_replica: int) -> tf.Tensor:
  """[chunk * per_replica, ...] -> [chunk, per_replica, ...]; a batch of another length is the examples function's
  mistake, named here rather than in a reshape error."""
  x = tf.convert_to_tensor(x)
  if x.shape.rank == 0 or x.shape[0] not in (None, chunk * per_replica):
    raise UserError(f"the examples function returned a tensor of shape {x.shape} for {chunk * per_replica} "
                    "indices; every tensor of its batch must have one row per index")
  cut = tf.reshape(x, tf.concat([[chunk, per_replica], tf.shape(x)[1:]], 0))
  cut.set_shape([chunk, per_replica, *x.shape[1:]])
  return cut


def with_index(batch: Any, indices: tf.Tensor) -> Any:
  """A dict batch gains its global example indices under 'index' (what trainer.dropout keys masks by); other
  batches are returned as they are."""
  if isinstance(batch, dict) and INDEX not in batch:
    return {**batch, INDEX: indices}
  return batch


def distributed_iterator(
    strategy: tf.distribute.Strategy, examples: ExamplesFn, global_batch_size: int, start: int
) -> tf.distribute.DistributedIterator:
  """An iterator over per-replica micro-batches, distributed by `strategy`, from global micro-batch `start`."""
  dataset = strategy.distribute_datasets_from_function(
      lambda context: micro_batch_dataset(examples, context, global_batch_size, start), _input_options(strategy)
  )
  return iter(dataset)


def _input_options(strategy: tf.distribute.Strategy) -> tf.distribute.InputOptions | None:
  """One input pipeline per replica for MirroredStrategy; on CPU replicas, without a MultiDeviceIterator.

  By default tf.distribute feeds a worker's replicas from one pipeline through a MultiDeviceIterator, which slows
  the whole step on CPU replicas (the README's Performance section has the ablation). GPUs keep the prefetch to
  device (fetch_to_device). MultiWorkerMirroredStrategy supports only TF's default.
  """
  if not isinstance(strategy, tf.distribute.MirroredStrategy):
    return None
  return tf.distribute.InputOptions(experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
                                    experimental_fetch_to_device=not replicas_on_cpu(strategy))


def permutation(positions: tf.Tensor, size: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """A pseudo-random permutation of [0, size), keyed by (seed, epoch), applied to int64 `positions` < size.

  A 4-round Feistel network (Luby-Rackoff) over [0, 4^h) >= size, with the splitmix64 hash as round function and
  cycle-walking to stay in [0, size): a bijection computed per index, so shuffling an epoch needs no buffer and
  any example of any epoch is found in O(1). `epoch` may differ per position.
  """
  half = max(1, math.ceil(math.log2(max(size, 2)) / 2))
  mask = tf.constant((1 << half) - 1, tf.int64)
  base = tf.cast(tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64), tf.uint64) * tf.constant(4, tf.uint64)
  keys = [_splitmix64(base + tf.constant(r, tf.uint64)) for r in range(4)]

  def rounds(x):
    left, right = tf.bitwise.right_shift(x, half), tf.bitwise.bitwise_and(x, mask)
    for key in keys:
      mixed = tf.cast(tf.bitwise.bitwise_and(_splitmix64(tf.bitwise.bitwise_xor(tf.cast(right, tf.uint64), key)),
                                             tf.cast(mask, tf.uint64)), tf.int64)
      left, right = right, tf.bitwise.bitwise_xor(left, mixed)
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(left, half), right)

  x = rounds(tf.cast(positions, tf.int64))
  # Cycle-walking: values that land outside [0, size) are permuted again; they return inside within a few steps.
  return tf.while_loop(lambda x: tf.reduce_any(x >= size), lambda x: (tf.where(x >= size, rounds(x), x),), [x])[0]
