"""TFDS datasets as index-addressed examples (trainer.data's contract), chosen in gin by name, split and data_dir.

A split is loaded into host memory once per process (fine for digits, mnist, cifar10; a dataset larger than memory
needs a streaming reader, which this module does not have). Global example index i is epoch i // N, position
i % N, and reads example `permutation(position)` of that epoch: a seeded shuffle that is a full pass per epoch,
independent of how many replicas or workers split the batch, and O(1) to resume. Each input pipeline computes only
its own replicas' indices (trainer.data.micro_batch_dataset), so it reads its own shard of every batch.
"""

import difflib
import fcntl
import functools
import os
from typing import Callable

import gin
import numpy as np
import tensorflow as tf

from trainer import data
from trainer.errors import UserError

Preprocess = Callable[[dict, tf.Tensor], dict]
"""Maps (features gathered from the dataset, with leading dim b; the global example indices [b]) to a batch."""

LOCAL_BUILDERS = {"digits": "trainer.tasks.digits"}  # prepared from files on this machine: no download, ever


def _split_names(split: str) -> list[str]:
  return [part.split("[")[0].strip() for part in split.split("+")]


@functools.lru_cache(maxsize=8)
def load(name: str, split: str, data_dir: str | None = None, download: bool = False) -> dict[str, np.ndarray]:
  """The whole split as numpy arrays, preparing it first if it is a local dataset (or `download` allows)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (slow import; only when used)
  tfds.disable_progress_bar()
  if name in LOCAL_BUILDERS:
    __import__(LOCAL_BUILDERS[name])  # registers the builder
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = {*tfds.list_builders(with_community_datasets=False), *LOCAL_BUILDERS}  # (a local one once imported)
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f" (close names: {', '.join(close)})" if close else ""
    raise UserError(f"there is no TFDS dataset named '{name}'{hint}; `tfds.list_builders()` lists them") from e
  if not builder.is_prepared():
    if name not in LOCAL_BUILDERS and not download:
      raise UserError(
          f"TFDS dataset '{name}' is not prepared in {builder.data_dir_root}; prepare it where the internet is "
          f"reachable with `tfds build {name} --data_dir={builder.data_dir_root}` (then copy that directory here), "
          "or allow the download with --gin_bindings=tfds_examples.download=True")
    builder = _prepare_once(builder, name, data_dir)
  for part in _split_names(split):
    if builder.info.splits and part not in builder.info.splits:  # (tfds.testing.mock_data has no split metadata)
      raise UserError(f"TFDS dataset '{name}' has no split '{part}'; it has {', '.join(builder.info.splits)}")
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(4096)))
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _prepare_once(builder, name: str, data_dir: str | None):
  """Prepares `builder`'s dataset and returns a builder that reads it. Several workers may start at once on one
  data dir: unserialised, all but the first failed here with TFDS's "Cannot rename ... already exists"."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  root = str(builder.data_dir_root)
  if "://" in root:  # no file locks on object stores: prepare, and accept a peer having done it first
    try:
      builder.download_and_prepare()
    except FileExistsError:
      pass
    return tfds.builder(name, data_dir=data_dir)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{name}.prepare.lock"), "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
    builder = tfds.builder(name, data_dir=data_dir)  # re-read: a peer may have prepared it while we waited
    if not builder.is_prepared():
      builder.download_and_prepare()
  return builder


@gin.configurable
def images_and_labels(features: dict, indices: tf.Tensor, flatten: bool = True, num_classes: int = 10,
                      latent_dim: int = 0, seed: int = 0) -> dict:
  """{'x': images scaled to [-1, 1] (flattened unless `flatten` is False), 'label': int32 [b],
  'y': one-hot [b, num_classes]}, plus 'z': latents [b, latent_dim] (keyed by example index) for a GAN."""
  x = tf.cast(features["image"], tf.float32) / 127.5 - 1.0
  if flatten:
    x = tf.reshape(x, [tf.shape(x)[0], -1])
  label = tf.cast(features["label"], tf.int32)
  batch = {"x": x, "label": label, "y": tf.one_hot(label, num_classes)}
  if latent_dim:
    batch["z"] = data.normal(indices, (latent_dim,), seed, stream=7)
  return batch


@gin.configurable
def tfds_examples(indices: tf.Tensor, name: str = "digits", split: str = "train", data_dir: str | None = None,
                  preprocess: Preprocess = images_and_labels, seed: int = 0, shuffle: bool = True,
                  download: bool = False) -> dict:
  """The examples at global `indices` of a TFDS split (see the module docstring). A trainer.data.ExamplesFn.

  Args:
    name, split, data_dir: as for `tfds.load` (data_dir None: TFDS's default, ~/tensorflow_datasets).
    preprocess: turns the gathered features into the batch the losses read.
    seed: the shuffle's seed (each epoch is a different permutation of it); shuffle=False reads in order.
    download: let TFDS download a dataset that is not prepared (never needed for 'digits').
  """
  with tf.init_scope():  # load eagerly: traced inside the pipeline's map function, TFDS's reader would run per call
    arrays = load(name, split, data_dir, download)
  size = len(next(iter(arrays.values())))
  epoch, position = indices // size, indices % size
  if shuffle:
    position = data.permutation(position, size, seed, epoch)
  features = {k: tf.gather(tf.constant(v), position) for k, v in arrays.items()}
  return preprocess(features, indices)
