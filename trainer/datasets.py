"""TFDS datasets as index-addressed examples (trainer.data's contract), chosen in gin by name, split and data_dir.

Global example index i is epoch i // N, position i % N, and reads example `permutation(position)` of that epoch: a
seeded shuffle that is a full pass per epoch, independent of how many replicas or workers split the batch, and O(1)
to resume. Each input pipeline computes only its own replicas' indices (trainer.data.micro_batch_dataset), so it
reads its own shard of every batch.

Two ways to fetch the examples at those positions, with the same result (`tfds_examples.source`): a small split is
loaded into host memory once per process and gathered from there (the fastest); a large one is read from its
ArrayRecord files on disk, one batched read per micro-batch (trainer.records, whose docstring says why that
design). 'auto' picks memory when the decoded split fits in MEMORY_LIMIT_BYTES. Either way the pipeline notes the
prepared data's fingerprint (trainer.fingerprints), which the checkpoint keeps.
"""

import contextlib
import difflib
import fcntl
import functools
import os
from typing import Callable, NamedTuple

import gin
import numpy as np
import tensorflow as tf

from absl import logging

from trainer import console, data, fingerprints, records
from trainer.errors import UserError

Preprocess = Callable[[dict, tf.Tensor], dict]
"""Maps (features gathered from the dataset, with leading dim b; the global example indices [b]) to a batch."""

LOCAL_BUILDERS = {"digits": "trainer.tasks.digits"}  # prepared from files on this machine: no download, ever
SOURCES = ("auto", "memory", "disk")
# 'auto' holds a split in memory up to this decoded size. Each input pipeline gathers from its own copy, and
# preparing the arrays holds about twice that for a moment: 1 GiB keeps mnist, cifar10 (150 MB) and the like in
# memory and sends celeb_a (19 GB decoded), imagenet and the like to disk.
MEMORY_LIMIT_BYTES = 2**30


def _split_names(split: str) -> list[str]:
  return [part.split("[")[0].strip() for part in split.split("+")]


def prepared(name: str, data_dir: str | None = None, download: bool = False):
  """The TFDS builder of a prepared dataset, preparing it first if it is a local one (or `download` allows)."""
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
  local = name in LOCAL_BUILDERS
  if not builder.is_prepared():
    if not local and not download:
      raise UserError(
          f"TFDS dataset '{name}' is not prepared in {builder.data_dir_root}; prepare it where the internet is "
          f"reachable with `tfds build {name} --data_dir={builder.data_dir_root} --file_format=array_record` (then "
          "copy that directory here), or allow the download with --gin_bindings=tfds_examples.download=True")
    builder = _prepare_once(builder, name, data_dir)
  elif local and not records.has_array_record(builder):  # prepared by an older trainer: add the disk copy
    builder = _prepare_once(builder, name, data_dir)
  return builder


def _check_split(builder, name: str, split: str) -> None:
  for part in _split_names(split):
    if builder.info.splits and part not in builder.info.splits:  # (tfds.testing.mock_data has no split metadata)
      raise UserError(f"TFDS dataset '{name}' has no split '{part}'; it has {', '.join(builder.info.splits)}")


@functools.lru_cache(maxsize=8)
def load(name: str, split: str, data_dir: str | None = None, download: bool = False) -> dict[str, np.ndarray]:
  """The whole split as numpy arrays, preparing it first if it is a local dataset (or `download` allows)."""
  builder = prepared(name, data_dir, download)
  _check_split(builder, name, split)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(4096)))
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _prepare_once(builder, name: str, data_dir: str | None):
  """Prepares `builder`'s dataset and returns a builder that reads it. Several workers may start at once on one
  data dir: unserialised, all but the first failed here with TFDS's "Cannot rename ... already exists"."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  root = str(builder.data_dir_root)
  if "://" in root:  # no file locks on object stores: prepare, and accept a peer having done it first
    try:
      _download_and_prepare(builder, name, root)
    except FileExistsError:
      pass
    return tfds.builder(name, data_dir=data_dir)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{name}.prepare.lock"), "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
    builder = tfds.builder(name, data_dir=data_dir)  # re-read: a peer may have prepared it while we waited
    if not builder.is_prepared() or (name in LOCAL_BUILDERS and not records.has_array_record(builder)):
      _download_and_prepare(builder, name, root)  # (a local builder writes both formats: trainer.tasks.digits)
      builder = tfds.builder(name, data_dir=data_dir)
  return builder


def _download_and_prepare(builder, name: str, root: str) -> None:
  logging.info("preparing TFDS dataset %s in %s (once: later runs read it from there)", name, root)
  # TFDS prints two lines of its own, with the download's size: for a local dataset they say "Downloading ...
  # Unknown size" where nothing is downloaded.
  with console.quiet_prints() if name in LOCAL_BUILDERS else contextlib.nullcontext():
    builder.download_and_prepare()


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


class Split(NamedTuple):
  """A split opened for reading by position: `read(positions)` returns the features at int64 `positions` [b]."""

  size: int
  fingerprint: str
  read: Callable[[tf.Tensor], dict]


@functools.lru_cache(maxsize=8)
def open_split(name: str, split: str, data_dir: str | None = None, download: bool = False,
               source: str = "auto") -> Split:
  """`split` of dataset `name`, read from memory or from disk as `source` says ('auto': by decoded size)."""
  if source not in SOURCES:
    raise UserError(f"tfds_examples.source = {source!r} is not one of {', '.join(map(repr, SOURCES))}")
  builder = prepared(name, data_dir, download)
  _check_split(builder, name, split)
  fingerprint = fingerprints.describe(builder, split) if builder.info.splits else f"{name} {split} (mock)"
  only_array_record = builder.info.splits and builder.info.as_proto.file_format == records.ARRAY_RECORD
  if source == "auto":  # (as_dataset, which loads the memory path, cannot read ArrayRecord files)
    decoded = _decoded_bytes(builder, split)
    small = decoded is not None and decoded <= MEMORY_LIMIT_BYTES
    source = "memory" if small and not only_array_record else "disk"
  elif source == "memory" and only_array_record:
    raise UserError(f"TFDS dataset '{name}' is prepared only as ArrayRecord files, which TFDS cannot load into "
                    "memory: use tfds_examples.source = 'disk' (or 'auto')")
  logging.info("tfds_examples: %s '%s' from %s (source=%s; tfds_examples.source chooses)", name, split,
               "host memory" if source == "memory" else "ArrayRecord files on disk", source)
  if source == "memory":
    arrays = load(name, split, data_dir, download)
    size = len(next(iter(arrays.values())))
    return Split(size, fingerprint, lambda p: {k: tf.gather(tf.constant(v), p) for k, v in arrays.items()})
  reader = records.open_split(builder, split)
  features = builder.info.features
  return Split(len(reader), fingerprint, lambda p: records.decode(features, records.read(reader, p)))


def _decoded_bytes(builder, split: str) -> int | None:
  """The split's size in memory once decoded (None: a feature has no fixed shape), or 0 for mock data."""
  if not builder.info.splits:
    return 0
  per_example = 0
  for info in _flat(builder.info.features.get_tensor_info()):
    if any(d is None for d in info.shape):
      return None
    per_example += int(np.prod(info.shape, dtype=np.int64)) * np.dtype(info.np_dtype).itemsize
  examples = sum(builder.info.splits[part].num_examples for part in _split_names(split))
  return examples * per_example


def _flat(tree) -> list:
  return [leaf for v in tree.values() for leaf in _flat(v)] if isinstance(tree, dict) else [tree]


@gin.configurable
def tfds_examples(indices: tf.Tensor, name: str = "digits", split: str = "train", data_dir: str | None = None,
                  preprocess: Preprocess = images_and_labels, seed: int = 0, shuffle: bool = True,
                  download: bool = False, source: str = "auto") -> dict:
  """The examples at global `indices` of a TFDS split (see the module docstring). A trainer.data.ExamplesFn.

  Args:
    name, split, data_dir: as for `tfds.load` (data_dir None: TFDS's default, ~/tensorflow_datasets).
    preprocess: turns the gathered features into the batch the losses read.
    seed: the shuffle's seed (each epoch is a different permutation of it); shuffle=False reads in order.
    download: let TFDS download a dataset that is not prepared (never needed for 'digits').
    source: 'memory' (the split is loaded into host memory), 'disk' (read from its ArrayRecord files by
      trainer.records) or 'auto' (memory when it fits in MEMORY_LIMIT_BYTES decoded). Both read the same examples.
  """
  with tf.init_scope():  # open eagerly: traced inside the pipeline's map function, TFDS's reader would run per call
    opened = open_split(name, split, data_dir, download, source)
  fingerprints.note(opened.fingerprint)
  epoch, position = indices // opened.size, indices % opened.size
  if shuffle:
    position = data.permutation(position, opened.size, seed, epoch)
  return preprocess(opened.read(position), indices)
