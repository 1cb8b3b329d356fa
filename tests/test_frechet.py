"""The Fréchet distance (trainer.frechet): its formula, the per-replica float64 sums joined by one all-reduce, the
figure's independence of the replica count, and the cache of the real data's statistics."""

import os

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from tests import toy
from trainer import data, datasets, frechet
from trainer.errors import UserError
from trainer.tasks import features, gan, models


def _stats(x: np.ndarray) -> frechet.Statistics:
  x = np.asarray(x, np.float64)
  return frechet.Statistics(float(len(x)), x.sum(0), x.T @ x)


def test_the_distance_is_the_closed_form_of_scipys_matrix_square_root():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
  b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
  mean_a, mean_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
  assert frechet.distance(_stats(a), _stats(b)) == pytest.approx(expected, rel=1e-9)
  assert abs(frechet.distance(_stats(a), _stats(a))) < 1e-9
  # Rank-deficient covariances (fewer samples than features) stay finite and non-negative.
  assert frechet.distance(_stats(a[:3]), _stats(b[:4])) >= 0


def _index_features(i):
  x = tf.cast(i, tf.float64)
  return tf.stack([x, tf.math.floormod(x * x, 97.0), tf.ones_like(x)], axis=1)


@pytest.mark.parametrize("replicas", [None, 1, 2, 3])
def test_every_sample_index_is_summed_exactly_once_at_any_replica_count(replicas):
  count, batch = 1003, 100  # the last step is padding for every replica count
  strategy = toy.strategy(replicas) if replicas else None
  stats = frechet.statistics(_index_features, count, batch, 3, strategy)
  expected = _stats(_index_features(tf.range(count, dtype=tf.int64)).numpy())
  assert stats.n == count
  np.testing.assert_array_equal(stats.sum, expected.sum)  # integers: exact in float64, in any order
  np.testing.assert_array_equal(stats.outer, expected.outer)


def _collectives(function) -> list[str]:
  graph = function.get_concrete_function().graph.as_graph_def()
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  return [n.op for n in nodes if n.op.startswith(("Collective", "NcclAllReduce", "AllReduce"))]


def test_the_whole_evaluation_is_one_all_reduce_per_replica():
  program = frechet.statistics_program(_index_features, 1003, 100, 3, toy.strategy(2))
  # One per replica device: the loop over the replica's samples holds none.
  assert _collectives(program.function) == ["CollectiveReduceV2"] * 2


def _generator() -> keras.Model:
  return models.mlp(3, 5, (8,), "tanh", "tanh", name="generator")


def _features() -> keras.Model:
  keras.utils.set_random_seed(7)
  return models.mlp(5, 4, (6,), "relu", name="features")


def _regression_real(indices):
  return {"x": data.normal(indices, (5,), seed=1)}


def _distance(replicas: int, batch: int = 64, **kwargs) -> float:
  strategy = toy.strategy(replicas)
  with strategy.scope():
    keras.utils.set_random_seed(0)
    generator = _generator()
  evaluation = frechet.FrechetDistance(generate=gan.samples, features=_features, real=_regression_real,
                                       real_count=700, samples=1001, batch=batch, **kwargs)
  return evaluation({"generator": generator}, strategy)["fcd"]


def test_the_distance_does_not_depend_on_the_replica_count_or_the_batch():
  one = _distance(1)
  assert one > 0.01
  assert _distance(2) == pytest.approx(one, rel=1e-9)
  assert _distance(3, batch=10) == pytest.approx(one, rel=1e-9)


def _digits_real(indices):
  return datasets.tfds_examples(indices, name="digits", split="train", shuffle=False)


def _cached_real(cache_dir, features_fn=features.classifier_features, real_count=1497):
  evaluation = frechet.FrechetDistance(generate=gan.samples, features=features_fn, real=_digits_real,
                                       real_count=real_count, cache_dir=str(cache_dir))
  return evaluation.real_statistics(features_fn())


def test_the_real_statistics_are_computed_once_and_keyed_by_data_count_and_feature_weights(tmp_path, monkeypatch):
  computed = []
  compute = frechet.statistics
  monkeypatch.setattr(frechet, "statistics", lambda *a, **k: computed.append(1) or compute(*a, **k))
  first = _cached_real(tmp_path)
  assert len(computed) == 1 and len(os.listdir(tmp_path)) == 1
  again = _cached_real(tmp_path)  # a new process's evaluation: read from the disk
  assert len(computed) == 1
  np.testing.assert_array_equal(again.outer, first.outer)
  _cached_real(tmp_path, real_count=1000)
  assert len(computed) == 2 and len(os.listdir(tmp_path)) == 2

  def other_weights():
    network = features.classifier_features()
    network.layers[-1].kernel.assign(network.layers[-1].kernel * 1.001)
    return network

  _cached_real(tmp_path, features_fn=other_weights)
  assert len(computed) == 3 and len(os.listdir(tmp_path)) == 3


def test_real_data_without_a_fingerprint_is_never_cached(tmp_path):
  _distance(1, cache_dir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_samples_that_do_not_fit_the_feature_network_are_one_line():
  evaluation = frechet.FrechetDistance(generate=lambda m, i: tf.zeros([tf.size(i), 7]), features=_features,
                                       real=_regression_real, real_count=10, samples=10)
  with pytest.raises(UserError, match=r"samples of shape \(7,\) do not fit the feature network's input \(5,\)"):
    evaluation({}, toy.strategy(1))


def test_an_unwritable_cache_is_one_warning_and_the_statistics_are_kept_in_memory(tmp_path, caplog):
  (tmp_path / "file").write_text("")
  stats = _cached_real(tmp_path / "file" / "cache")  # below a file: not even root can write there
  assert stats.n == 1497
  assert "cannot cache the real statistics" in caplog.text and "set TRAINER_CACHE" in caplog.text
