"""The Fréchet distance between generated and real data in the features of a fixed network (FID's formula).

Features are kept as float64 sums (n, Σx, Σxxᵀ), as torchmetrics does: sums add, so every replica sums the features
of its own share of the samples and ONE all-reduce of the packed sums gives the whole set's statistics; the mean,
the covariance and the distance are then computed on the host in float64. Sample i is a function of i alone (its
latent is keyed by i, as training examples are: trainer.data), and replica r of R takes indices
`(s * R + r) * b + [0, b)` at step s with a fixed per-replica batch b, so every sample is computed with the same
shapes whatever R is: the figure does not depend on how many replicas or workers draw the samples (the sums differ
only by float64 rounding, ~1e-16 relative).

The real data's statistics are computed once on the host (no collectives: workers need not agree whether they have
them) and cached on disk by the chief, keyed by the data's fingerprint (trainer.fingerprints: dataset, version,
split, sizes), the sample count and a hash of the feature network's weights, so a changed network or dataset never
reuses stale statistics. The estimate is biased at small n (TF-GAN warns of it too): compare figures computed with
the same sample counts only.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Callable, Mapping

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import fingerprints
from trainer.data import ExamplesFn
from trainer.errors import UserError, check_count
from trainer.strategy import is_chief

FeaturesOf = Callable[[tf.Tensor], tf.Tensor]
"""Maps global sample indices (int64 [b]) to features [b, d]; traced, on a replica's device."""

SampleFn = Callable[[Mapping[str, keras.Model], tf.Tensor], tf.Tensor]
"""Maps (the models, global sample indices int64 [b]) to samples [b, ...] in the data's scale; a pure function of
the indices (trainer.tasks.gan.samples)."""


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Float64 sums of n feature vectors: Σx [d] and Σxxᵀ [d, d]."""

  n: float
  sum: np.ndarray
  outer: np.ndarray

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the unbiased (n - 1) covariance, as numpy's cov and the FID implementations compute it."""
    if self.n < 2:
      raise UserError(f"a Fréchet distance needs at least 2 samples, got {self.n:.0f}")
    mean = self.sum / self.n
    return mean, (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)

  @classmethod
  def from_packed(cls, packed: np.ndarray, dim: int) -> "Statistics":
    return cls(float(packed[0]), packed[1:1 + dim], packed[1 + dim:].reshape(dim, dim))


def distance(a: Statistics, b: Statistics) -> float:
  """|μa - μb|² + tr(Ca + Cb - 2 (Ca Cb)^½).

  tr (Ca Cb)^½ is the sum of the square roots of the eigenvalues of Ca^½ Cb Ca^½, a symmetric positive
  semi-definite matrix: two symmetric eigendecompositions, with none of the complex residue or failed
  convergence of a general matrix square root (scipy's sqrtm, which FID implementations patch with an epsilon).
  """
  mean_a, cov_a = a.mean_and_covariance()
  mean_b, cov_b = b.mean_and_covariance()
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
  middle = root_a @ cov_b @ root_a
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
  return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def _sums(features_of: FeaturesOf, first: tf.Tensor, count: int, batch: int, stride: int, steps: int, dim: int
          ) -> tf.Tensor:
  """The packed float64 sums [n, Σx, Σxxᵀ] of the features of indices `first + s * stride + [0, batch)`, s < steps,
  that are below `count`. Indices past `count` (the last step's padding) are computed as sample count - 1 and
  weighted 0, so every step has the same shapes."""
  def step(s, n, total, outer):
    indices = first + s * stride + tf.range(batch, dtype=tf.int64)
    weight = tf.cast(indices < count, tf.float64)[:, None]
    features = tf.cast(features_of(tf.minimum(indices, count - 1)), tf.float64) * weight
    return (s + 1, n + tf.reduce_sum(weight), total + tf.reduce_sum(features, 0),
            outer + tf.matmul(features, features, transpose_a=True))

  zero = tf.constant(0, tf.int64), tf.constant(0, tf.float64), tf.zeros([dim], tf.float64), tf.zeros([dim, dim],
                                                                                                     tf.float64)
  _, n, total, outer = tf.while_loop(lambda s, *_: s < steps, step, zero)
  return tf.concat([[n], total, tf.reshape(outer, [-1])], 0)


class Program:
  """A compiled statistics computation (`statistics_program`); calling it runs `function` and unpacks the sums."""

  def __init__(self, function: Callable[[], tf.Tensor], dim: int):
    self.function, self.dim = function, dim

  def __call__(self) -> Statistics:
    return Statistics.from_packed(self.function().numpy(), self.dim)


def statistics_program(features_of: FeaturesOf, count: int, batch: int, dim: int,
                       strategy: tf.distribute.Strategy | None = None) -> Program:
  """A compiled program returning the statistics of the features of samples [0, count): on every replica of
  `strategy`, each its share, joined by one all-reduce; without a strategy, on this host alone."""
  replicas = strategy.num_replicas_in_sync if strategy else 1
  steps = -(-count // (replicas * batch))

  @tf.function(autograph=False)
  def run():
    if strategy is None:
      return _sums(features_of, tf.constant(0, tf.int64), count, batch, batch, steps, dim)

    def replica_fn():
      context = tf.distribute.get_replica_context()
      first = tf.cast(context.replica_id_in_sync_group, tf.int64) * batch
      local = _sums(features_of, first, count, batch, replicas * batch, steps, dim)
      return context.all_reduce(tf.distribute.ReduceOp.SUM, local)  # the evaluation's one collective

    return strategy.experimental_local_results(strategy.run(replica_fn))[0]

  return Program(run, dim)


def statistics(features_of: FeaturesOf, count: int, batch: int, dim: int,
               strategy: tf.distribute.Strategy | None = None) -> Statistics:
  """`statistics_program(...)()`: for statistics computed once."""
  return statistics_program(features_of, count, batch, dim, strategy)()


def weights_hash(model: keras.Model) -> str:
  """A hash of `model`'s weights (values, shapes and dtypes) and its layers' classes."""
  digest = hashlib.sha256(",".join(type(layer).__name__ for layer in model.layers).encode())
  for weight in model.weights:
    value = np.asarray(weight)
    digest.update(f"{value.dtype}{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def default_cache_dir() -> str:
  """$TRAINER_CACHE/frechet, by default ~/.cache/trainer/frechet."""
  root = os.environ.get("TRAINER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trainer")
  return os.path.join(root, "frechet")


def _save(path: str, stats: Statistics, key: Mapping[str, object]) -> None:
  """Writes `stats` to `path` atomically (a temporary file renamed into place), with its key for people to read."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".npz", delete=False) as f:
    try:
      np.savez(f, n=stats.n, sum=stats.sum, outer=stats.outer, key=json.dumps(key, sort_keys=True))
    except BaseException:  # a full disk: leave no half-written file behind
      os.remove(f.name)
      raise
  os.replace(f.name, path)


@gin.configurable
class FrechetDistance:
  """An evaluation (trainer.actions.EvaluateFn): the Fréchet distance between `samples` generated samples and
  `real_count` real examples, in the features of the network `features()` builds. Runs on every worker.

  Args:
    generate: (models, indices) -> samples in the data's scale, a pure function of the indices
      (trainer.tasks.gan.samples).
    features: builds the fixed feature network (trainer.tasks.features); samples and real examples are reshaped
      to its input shape when they hold as many values.
    real: the real examples, as a function of their indices (e.g. a scoped `@real/tfds_examples` with
      `shuffle = False`); `real_key` is the batch entry holding them.
    real_count: how many real examples (indices [0, real_count)).
    samples: how many generated samples (indices [0, samples)).
    batch: samples per replica per step; the figure does not depend on it beyond float64 rounding.
    name: the figure's name (reported as eval/<name>).
    cache_dir: where the real statistics are cached (default: $TRAINER_CACHE/frechet or ~/.cache/trainer/frechet).
  """

  def __init__(self, generate: SampleFn = gin.REQUIRED, features: Callable[[], keras.Model] = gin.REQUIRED,
               real: ExamplesFn = gin.REQUIRED, real_count: int = gin.REQUIRED, samples: int = 10_000,
               batch: int = 500, name: str = "fcd", real_key: str = "x", cache_dir: str | None = None):
    for what, value in (("samples", samples), ("real_count", real_count), ("batch", batch)):
      check_count(f"FrechetDistance.{what}", value, minimum=2 if what != "batch" else 1)
    self.generate, self.features, self.real, self.real_count = generate, features, real, real_count
    self.samples, self.batch, self.name, self.real_key = samples, batch, name, real_key
    self.cache_dir = cache_dir or default_cache_dir()
    self._networks: dict[int, keras.Model] = {}  # id(strategy) -> the feature network built in its scope
    self._programs: dict[tuple, Program] = {}  # traced once per strategy and set of models
    self._real: dict[int, Statistics] = {}  # id(feature network) -> its real statistics, for this process

  def __call__(self, models: Mapping[str, keras.Model], strategy: tf.distribute.Strategy) -> dict[str, float]:
    network = self._network(strategy)
    dim = int(network.output_shape[-1])
    real = self.real_statistics(network, write=is_chief(strategy))
    key = (id(strategy), *map(id, models.values()))
    if key not in self._programs:
      features_of = lambda i: network(self._shaped(self.generate(models, i), network), training=False)
      self._programs[key] = statistics_program(features_of, self.samples, self.batch, dim, strategy)
    return {self.name: distance(self._programs[key](), real)}

  def _network(self, strategy: tf.distribute.Strategy) -> keras.Model:
    if id(strategy) not in self._networks:
      with strategy.scope():  # mirrored: each replica reads its own copy
        self._networks[id(strategy)] = self.features()
    return self._networks[id(strategy)]

  def _shaped(self, x: tf.Tensor, network: keras.Model) -> tf.Tensor:
    shape = tuple(network.input_shape[1:])
    if tuple(x.shape[1:]) == shape:
      return x
    if x.shape[1:].num_elements() != int(np.prod(shape)):
      raise UserError(f"FrechetDistance: samples of shape {tuple(x.shape[1:])} do not fit the feature network's "
                      f"input {shape}; bind FrechetDistance.features to a network for this data")
    return tf.reshape(x, [-1, *shape])

  def real_statistics(self, network: keras.Model, write: bool = True) -> Statistics:
    """The real examples' statistics: from this process's memory, else the disk cache, else computed on the host
    (and written to the cache when `write`). Not cached when the real data has no fingerprint (generated data).
    Kept per network: its weights are fixed, and hashing InceptionV3's at every evaluation would cost more than the
    evaluation's own arithmetic."""
    if id(network) in self._real:
      return self._real[id(network)]
    with tf.init_scope(), fingerprints.collecting() as found:
      self.real(tf.constant([0], tf.int64))  # the examples function notes its data's fingerprint
    data = fingerprints.combine(found)
    key = {"data": data or f"unfingerprinted {self.real!r}", "count": self.real_count, "key": self.real_key,
           "features": weights_hash(network), "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(self.cache_dir, f"{digest}.npz")
    if data and os.path.exists(path):
      saved = np.load(path)
      stats = Statistics(float(saved["n"]), saved["sum"], saved["outer"])
      logging.info("Fréchet distance: real statistics from %s", path)
    else:
      features_of = lambda i: network(self._shaped(self.real(i)[self.real_key], network), training=False)
      stats = statistics(features_of, self.real_count, self.batch, int(network.output_shape[-1]))
      if data and write:
        try:
          _save(path, stats, key)
          logging.info("Fréchet distance: real statistics of %d examples cached in %s", self.real_count, path)
        except OSError as e:  # an unwritable HOME (a container run as any uid): this process keeps them in memory
          logging.warning("Fréchet distance: cannot cache the real statistics in %s (%s); each process computes "
                          "them once: set TRAINER_CACHE to a writable directory", self.cache_dir,
                          e.strerror or type(e).__name__)
    self._real[id(network)] = stats
    return stats
