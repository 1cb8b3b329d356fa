"""trainer.fingerprints: the data a checkpoint was trained on is kept in it, and a resume on other data is refused
with one line, the checkpoint untouched; a resume on the other input path of the same data is not."""

import functools
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import processes, toy
from trainer import datasets, fingerprints, train
from trainer.errors import UserError


def test_collecting_keeps_each_noted_fingerprint_once_and_check_refuses_other_data():
  with fingerprints.collecting() as found:
    for text in ("mnist/3.0.1 train", "digits/1.0.0 train", "mnist/3.0.1 train"):
      fingerprints.note(text)
  fingerprints.note("outside")  # noted with no collector open: kept nowhere
  assert fingerprints.combine(found) == "mnist/3.0.1 train + digits/1.0.0 train"
  fingerprints.check("", "anything", "dir")  # a fresh (or pre-fingerprint) checkpoint takes any data
  fingerprints.check("a", "a", "dir")
  with pytest.raises(UserError, match=r"^the checkpoint in dir was trained on \[a\] but this run reads \[b\]"):
    fingerprints.check("a", "b", "dir")


def test_describe_names_version_split_count_and_shard_lengths(tmp_path):
  builder = datasets.prepared("digits", str(tmp_path))
  assert fingerprints.describe(builder, "train[:10]+test") == (
      "digits/1.0.0 train[:10]: 1497 examples in shards [1497], test: 300 examples in shards [300]")


def _run(model_dir, data_dir, split, source="auto", train_steps=2):
  examples = functools.partial(datasets.tfds_examples, name="digits", split=split, data_dir=data_dir, source=source,
                               preprocess=lambda features, indices: {
                                   "x": tf.reshape(tf.cast(features["image"], tf.float32), [-1, 64])[:, :4] / 255.0,
                                   "y": tf.cast(features["label"], tf.float32)[:, None]})
  datasets.open_split.cache_clear()  # as in a new process
  return toy.run(model_dir, train_steps=train_steps, checkpoint_every=2, examples=examples)


@pytest.mark.slow
def test_a_resume_on_other_data_is_refused_and_the_checkpoint_is_kept(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _run(tmp_path / "run", data_dir, "train")
  saved = processes.checkpoint_state(tmp_path / "run")
  assert saved["data_fingerprint/.ATTRIBUTES/VARIABLE_VALUE"] == b"digits/1.0.0 train: 1497 examples in shards [1497]"
  with pytest.raises(UserError, match=r"^the checkpoint in .*checkpoints was trained on \[digits/1.0.0 train: 1497 "
                                      r"examples in shards \[1497\]\] but this run reads \[digits/1.0.0 test: 300"):
    _run(tmp_path / "run", data_dir, "test", train_steps=4)
  after = processes.checkpoint_state(tmp_path / "run")
  assert after.keys() == saved.keys() and all(np.array_equal(after[k], saved[k]) for k in saved)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["checkpoint", "ckpt-2.data-00000-of-00001",
                                                                   "ckpt-2.index"]
  assert _run(tmp_path / "run", data_dir, "train", source="disk", train_steps=4).update == 4  # same data, on disk


def test_a_checkpoint_from_before_fingerprints_resumes_unchecked(tmp_path, monkeypatch):
  data_dir = str(tmp_path / "tfds")
  with pytest.MonkeyPatch.context() as patch:  # writes a checkpoint as trainer did before fingerprints
    patch.setattr(train, "_fingerprint_slot", lambda checkpoint_dir: {})
    _run(tmp_path / "run", data_dir, "train")
  assert "data_fingerprint/.ATTRIBUTES/VARIABLE_VALUE" not in processes.checkpoint_state(tmp_path / "run")
  assert _run(tmp_path / "run", data_dir, "test", train_steps=4).update == 4  # restored (no data to compare with)
