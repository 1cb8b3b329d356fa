"""trainer.datasets: TFDS splits as index-addressed examples, sharded per input pipeline, with clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.processes import REPO
from trainer import data, datasets
from trainer.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_cache():
  datasets.load.cache_clear()
  datasets.open_split.cache_clear()  # (mock data of another size under the same name, split and data_dir)
  yield
  datasets.load.cache_clear()
  datasets.open_split.cache_clear()


@pytest.mark.parametrize("size", [1, 2, 3, 10, 257, 1497, 4096])
def test_permutation_is_a_bijection_and_differs_per_epoch(size):
  positions = tf.range(size, dtype=tf.int64)
  first = data.permutation(positions, size, 0, tf.zeros([size], tf.int64)).numpy()
  second = data.permutation(positions, size, 0, tf.ones([size], tf.int64)).numpy()
  assert sorted(first) == list(range(size)) and sorted(second) == list(range(size))
  if size > 2:
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(size))


def _pipelines_read(examples, pipelines, global_batch, micro_batches):
  """The labels each of `pipelines` input pipelines reads for `micro_batches` global micro-batches."""
  read = []
  for p in range(pipelines):
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=p,
                                         num_replicas_in_sync=pipelines)
    dataset = data.micro_batch_dataset(examples, context, global_batch, 0).take(micro_batches)
    read.append(np.concatenate([b["index"].numpy() for b in dataset]))
  return read


def test_two_pipelines_read_disjoint_shards_that_cover_an_epoch_once():
  with tfds.testing.mock_data(num_examples=40):
    def examples(indices):
      return datasets.tfds_examples(indices, name="mnist", split="train", download=True,
                                    preprocess=lambda f, i: {"index": tf.cast(f["label"], tf.int64) * 0 + i % 40})
    first, second = _pipelines_read(examples, 2, global_batch=8, micro_batches=5)  # 5 x 8 = one epoch of 40
  assert not set(first) & set(second)
  assert sorted(np.concatenate([first, second])) == list(range(40))


def test_mock_tfds_data_is_shuffled_by_seed_and_preprocessed():
  with tfds.testing.mock_data(num_examples=20):
    one = datasets.tfds_examples(tf.range(20, dtype=tf.int64), name="mnist", split="train", seed=1, download=True)
    again = datasets.tfds_examples(tf.range(20, dtype=tf.int64), name="mnist", split="train", seed=1, download=True)
    other = datasets.tfds_examples(tf.range(20, dtype=tf.int64), name="mnist", split="train", seed=2, download=True)
  assert one["x"].shape == (20, 784) and one["y"].shape == (20, 10)
  assert float(tf.reduce_min(one["x"])) >= -1 and float(tf.reduce_max(one["x"])) <= 1
  np.testing.assert_array_equal(one["x"], again["x"])
  assert not np.array_equal(one["x"], other["x"])


def test_unknown_name_lists_close_names_including_the_local_ones():
  with pytest.raises(UserError, match=r"no TFDS dataset named 'mnsit' \(close names: mnist, kmnist, emnist\)"):
    datasets.load("mnsit", "train")
  with pytest.raises(UserError, match=r"no TFDS dataset named 'digit' \(close names: digits\)"):
    datasets.load("digit", "train")


def test_an_error_while_the_pipeline_is_traced_stays_one_clear_user_error():
  # tf.data traces tfds_examples in its map function; AutoGraph would turn the error into a StagingError.
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
  with pytest.raises(UserError, match=r"^there is no TFDS dataset named 'mnsit'"):
    data.micro_batch_dataset(lambda i: datasets.tfds_examples(i, name="mnsit"), context, 8, 0)


def test_unknown_split_lists_the_splits(tmp_path):
  with pytest.raises(UserError, match="has no split 'validation'; it has (train, test|test, train)"):
    datasets.load("digits", "validation", str(tmp_path))


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(UserError, match=f"'mnist' is not prepared in {tmp_path}.*tfds build mnist"):
    datasets.load("mnist", "train", str(tmp_path))


@pytest.mark.slow
def test_workers_starting_together_prepare_digits_once_into_one_data_dir(tmp_path):
  program = (f"from trainer import datasets; print(len(datasets.load('digits', 'train', {str(tmp_path)!r})['label']))")
  workers = [subprocess.Popen([sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
  for worker in workers:
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0 and out.split()[-1] == "1497", err[-2000:]  # unlocked, 2 of 3 failed to rename


def test_each_epoch_read_through_tfds_examples_is_a_different_full_pass():
  with tfds.testing.mock_data(num_examples=40):
    read = datasets.tfds_examples(tf.range(80, dtype=tf.int64), name="mnist", split="train", download=True,
                                  preprocess=lambda features, indices: {"image": features["image"]})
  images = [bytes(image) for image in read["image"].numpy()]
  first, second = images[:40], images[40:]
  assert len(set(first)) == 40 and set(first) == set(second)  # each epoch reads every example once
  assert first != second  # in another order: the epoch (index // N) reaches the shuffle


def test_an_unknown_source_is_one_line(tmp_path):
  with pytest.raises(UserError, match=r"^tfds_examples.source = 'ram' is not one of 'auto', 'memory', 'disk'\n"):
    datasets.tfds_examples(tf.range(4, dtype=tf.int64), data_dir=str(tmp_path), source="ram")


def test_auto_keeps_a_small_split_in_memory_and_sends_a_large_one_to_disk(tmp_path, monkeypatch):
  small = datasets._decoded_bytes(datasets.prepared("digits", str(tmp_path)), "train")
  assert small == 1497 * (8 * 8 * 1 + 8)  # uint8 pixels and an int64 label
  loaded = {}
  for limit in (small, small - 1):  # at the limit, and one byte under the split's size
    monkeypatch.setattr(datasets, "MEMORY_LIMIT_BYTES", limit)
    with pytest.MonkeyPatch.context() as patch:
      calls = []
      patch.setattr(datasets, "load", lambda *args, calls=calls: calls.append(args) or {"label": np.zeros(3)})
      datasets.open_split.cache_clear()
      datasets.open_split("digits", "train", str(tmp_path))
    loaded[limit] = bool(calls)
  assert loaded == {small: True, small - 1: False}  # into memory; read from disk


def test_a_dataset_prepared_only_as_array_record_is_read_from_disk(tmp_path):
  from benchmarks import input as synthetic  # pylint: disable=import-outside-toplevel  (writes ArrayRecord only)
  synthetic.write_synthetic(str(tmp_path), 40, shards=2)  # 0.5 MiB: 'auto' would keep it in memory
  read = datasets.tfds_examples(tf.range(40, dtype=tf.int64), name="synthetic64", data_dir=str(tmp_path),
                                preprocess=lambda features, _: features)
  assert sorted(read["label"].numpy().tolist()) == sorted(i % 10 for i in range(40))
  assert read["image"].shape == (40, 64, 64, 3)
  datasets.open_split.cache_clear()
  with pytest.raises(UserError, match="^TFDS dataset 'synthetic64' is prepared only as ArrayRecord files.*'disk'"):
    datasets.open_split("synthetic64", "train", str(tmp_path), source="memory")
