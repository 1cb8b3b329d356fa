"""trainer.records: a TFDS split read from its ArrayRecord files by position reads what the memory path reads, trains
to the same weights, resumes bit for bit, is replica-invariant, and damaged or missing files give one clear line."""

import functools
import hashlib
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import processes, toy
from trainer import data, datasets, records
from trainer.errors import UserError

SPLIT = "train[100:1300]"  # 1,200 examples, from inside the shard (the reader's skip) and divisible by the batches


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  datasets.prepared("digits", str(path))  # both formats (trainer.tasks.digits)
  return str(path)


@pytest.fixture(autouse=True)
def _fresh_cache():
  datasets.open_split.cache_clear()
  datasets.load.cache_clear()
  yield
  datasets.open_split.cache_clear()
  datasets.load.cache_clear()


def test_the_disk_path_reads_exactly_what_the_memory_path_reads(data_dir):
  indices = tf.range(2400, dtype=tf.int64)  # two epochs, shuffled
  read = {source: datasets.tfds_examples(indices, split=SPLIT, data_dir=data_dir, source=source,
                                         preprocess=lambda features, _: features)
          for source in ("memory", "disk")}
  np.testing.assert_array_equal(read["memory"]["image"], read["disk"]["image"])
  np.testing.assert_array_equal(read["memory"]["label"], read["disk"]["label"])
  assert read["disk"]["image"].shape == (2400, 8, 8, 1) and read["disk"]["image"].dtype == tf.uint8
  assert len({bytes(x) for x in read["disk"]["image"].numpy()}) > 1100  # many distinct digits, not one repeated


def test_two_pipelines_read_disjoint_shards_that_cover_an_epoch_on_disk(data_dir):
  whole = datasets.load("digits", SPLIT, data_dir)
  epoch = sorted(bytes(x) + bytes([y]) for x, y in zip(whole["image"], whole["label"]))
  read = []
  for p in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=p, num_replicas_in_sync=2)
    examples = functools.partial(datasets.tfds_examples, split=SPLIT, data_dir=data_dir, source="disk",
                                 preprocess=lambda features, indices: {**features, "index": indices})
    batches = list(data.micro_batch_dataset(examples, context, 16, 0).take(75))  # 75 x 16 = one epoch
    read.append([(bytes(x) + bytes([y]), i) for b in batches for x, y, i in zip(b["image"].numpy(),
                                                                               b["label"].numpy(), b["index"].numpy())])
  assert not {i for _, i in read[0]} & {i for _, i in read[1]}
  assert sorted(x for shard in read for x, _ in shard) == epoch  # every example of the split exactly once


def _quadrants(features: dict, indices: tf.Tensor) -> dict:
  """A digit as a regression example of the toy's shapes: x = its 4 quadrants' mean ink, y = label / 10."""
  del indices
  image = tf.reshape(tf.cast(features["image"], tf.float32) / 255.0, [-1, 2, 4, 2, 4])  # [b, row half, ., col half, .]
  x = tf.reshape(tf.reduce_mean(image, axis=[2, 4]), [-1, 4])
  return {"x": x, "y": tf.cast(features["label"], tf.float32)[:, None] / 10}


def _run(model_dir, data_dir, source="disk", replicas=1, train_steps=6, **kwargs):
  """tests/toy.py's models and losses on digits read from `source`, K = 2 micro-batches of 16 per update.

  The toy's model shapes on purpose: in one process, 2-replica strategies share TF's collective instance keys,
  so an all-reduce of another size here would break the other test files' 2-replica runs (and did)."""
  examples = functools.partial(datasets.tfds_examples, split=SPLIT, data_dir=data_dir, source=source, seed=3,
                               preprocess=_quadrants)
  return toy.run(model_dir, replicas=replicas, cycle=[("a", 1, 2)], train_steps=train_steps, global_batch_size=16,
                 examples=examples, **kwargs)


@pytest.mark.slow
def test_memory_and_disk_runs_end_on_the_same_weights(tmp_path, data_dir):
  memory, disk = (toy.weights(_run(tmp_path / s, data_dir, s, train_steps=8)) for s in ("memory", "disk"))
  first = toy.weights(_run(tmp_path / "first", data_dir, "disk", train_steps=1))
  assert toy.max_diff(memory, disk) == 0 and toy.max_diff(first, disk) > 1e-3  # (the weights did move)


def test_a_resumed_disk_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path, data_dir):
  whole = _run(tmp_path / "whole", data_dir, train_steps=10)
  _run(tmp_path / "split", data_dir, train_steps=4, checkpoint_every=4)
  resumed = _run(tmp_path / "split", data_dir, train_steps=10)
  assert resumed.update == 10 and toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0
  for a, b in zip(whole.optimizers["a"].variables, resumed.optimizers["a"].variables):
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_one_and_two_replicas_end_on_the_same_weights_on_disk(tmp_path, data_dir):
  one, two = (toy.weights(_run(tmp_path / str(r), data_dir, replicas=r, train_steps=8)) for r in (1, 2))
  assert toy.max_diff(one, two) <= 1e-6


def _files(directory) -> dict[str, str]:
  return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
          for name in os.listdir(directory)}


def _copy_digits(tmp_path, data_dir) -> str:
  """A private copy of the prepared digits (a test may damage it)."""
  copy = tmp_path / "tfds"
  tf.io.gfile.makedirs(str(copy / "digits" / "1.0.0"))
  for name in os.listdir(os.path.join(data_dir, "digits", "1.0.0")):
    tf.io.gfile.copy(os.path.join(data_dir, "digits", "1.0.0", name), str(copy / "digits" / "1.0.0" / name))
  return str(copy)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_missing_or_truncated_file_is_one_line_and_the_checkpoint_is_kept(tmp_path, data_dir, damage):
  copy = _copy_digits(tmp_path, data_dir)
  _run(tmp_path / "run", copy, train_steps=2, checkpoint_every=2)
  saved = _files(tmp_path / "run" / "checkpoints")
  shard = os.path.join(copy, "digits", "1.0.0", "digits-train.array_record-00000-of-00001")
  if damage == "truncate":
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  else:
    os.remove(shard)
  datasets.open_split.cache_clear()  # as in the new process a resume is
  problem = "is unreadable|holds" if damage == "truncate" else "is missing"
  with pytest.raises(UserError, match=f"^ArrayRecord file {shard} ({problem}).*delete .*digits/1.0.0 and prepare"):
    _run(tmp_path / "run", copy, train_steps=4)
  assert _files(tmp_path / "run" / "checkpoints") == saved


def _tfrecord_only(copy) -> str:
  """Makes the copy's metadata list only its TFRecord files, as TFDS writes them; returns its version dir."""
  version_dir = os.path.join(copy, "digits", "1.0.0")
  info_path = os.path.join(version_dir, "dataset_info.json")
  info = json.load(open(info_path))
  info.pop("alternativeFileFormats")
  json.dump(info, open(info_path, "w"))
  return version_dir


def test_a_dataset_prepared_only_as_tfrecord_names_the_convert_command(tmp_path, data_dir):
  copy = _copy_digits(tmp_path, data_dir)
  version_dir = _tfrecord_only(copy)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder("digits", data_dir=copy)
  with pytest.raises(UserError, match=(f"^TFDS dataset 'digits' in {version_dir} is prepared only as tfrecord.*"
                                       f"tfds convert_format --dataset_version_dir={version_dir} "
                                       "--out_file_format=array_record")):
    records.open_split(builder, "train")


def test_the_local_digits_builder_adds_the_array_record_copy_to_an_older_tfrecord_one(tmp_path, data_dir):
  copy = _copy_digits(tmp_path, data_dir)
  version_dir = _tfrecord_only(copy)
  for name in os.listdir(version_dir):
    if ".array_record-" in name:
      os.remove(os.path.join(version_dir, name))
  reader = records.open_split(datasets.prepared("digits", copy), "test")
  assert len(reader) == 300 and len(reader.read(np.array([0, 299, 5]))) == 3


EXAMPLES = 190_000  # 2.2 GiB of 64x64x3 records: measured, 1.85x the peak RSS of the process that trains on them
BATCH = 1024  # one epoch in few updates: the test is about reading every record, not about the model
_LARGE = f"BATCH = {BATCH}" + """
import functools, json, sys
import time
import keras
from absl import logging
from benchmarks import input as synthetic  # registers the 'synthetic64' builder
from tests import processes, toy
from trainer import datasets
from trainer.tasks import classify, models
logging.use_absl_handler()
logging.set_verbosity("info")  # the line saying which source runs
start = time.perf_counter()
examples = functools.partial(datasets.tfds_examples, name="synthetic64", data_dir=sys.argv[1], source="auto")
run = toy.run(sys.argv[2], train_steps=int(sys.argv[3]), global_batch_size=BATCH, checkpoint_every=10_000,
              models={"a": functools.partial(models.mlp, input_dim=64 * 64 * 3, output_dim=10, hidden=(8,), name="a")},
              optimizers={"a": lambda: keras.optimizers.Adam(1e-3)}, losses={"a": classify.cross_entropy},
              examples=examples, log_every=100)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"update": run.update, "loss": run.last_log["a/loss"], "seconds": time.perf_counter() - start,
                  "peak_rss": int(status["VmHWM"].split()[0]) * 1024}))
"""


@pytest.mark.slow
def test_a_split_several_times_larger_than_the_memory_it_uses_trains_a_full_epoch(tmp_path):
  from benchmarks import input as synthetic  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  written = synthetic.write_synthetic(str(tmp_path / "tfds"), EXAMPLES)
  print(f"wrote {written / 2**30:.2f} GiB in {time.perf_counter() - start:.1f} s")
  updates = -(-EXAMPLES // BATCH)  # every record read once
  result = processes.run("-c", _LARGE, str(tmp_path / "tfds"), str(tmp_path / "run"), str(updates), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  print(f"data {written / 2**30:.2f} GiB, peak RSS {report['peak_rss'] / 2**30:.2f} GiB, {report['seconds']:.1f} s")
  assert "synthetic64 'train' from ArrayRecord files on disk (source=disk" in result.stderr  # 'auto' chose disk
  assert report["update"] == updates and np.isfinite(report["loss"])
  # Most of the ~1.2 GiB peak is TensorFlow itself (the digits job peaks at 0.9 GiB); the split would not fit.
  assert written > 2.1 * 2**30 and report["peak_rss"] < written / 1.6


@pytest.mark.slow
def test_two_workers_on_the_disk_path_end_on_the_weights_of_one_process_on_it(tmp_path, data_dir):
  args = ["--gin_file=configs/classifier_digits.gin", "--gin_bindings=TRAIN_STEPS=20",
          "--gin_bindings=tfds_examples.source='disk'", f"--gin_bindings=tfds_examples.data_dir='{data_dir}'",
          f"--gin_bindings=classifier_quality.data_dir='{data_dir}'"]
  single = processes.run("-m", "trainer.main", f"--model_dir={tmp_path / 'one'}", *args)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = processes.run("-m", "launch.local", "--num_workers=2", "--", f"--model_dir={tmp_path / 'two'}", *args)
  assert multi.returncode == 0, multi.stdout[-3000:]
  assert "on 2 replica(s)" in multi.stdout and multi.stdout.count("ArrayRecord files on disk") >= 2
  # (max_diff also asserts the two checkpoints name the same data fingerprint)
  diff = processes.max_diff(processes.checkpoint_state(tmp_path / "one"), processes.checkpoint_state(tmp_path / "two"))
  assert diff <= 1e-6, diff
