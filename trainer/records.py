"""A TFDS split read from disk by example position: ArrayRecord files, one batched read per micro-batch.

Why this design: trainer's input makes global example i a pure function of i (trainer.data), which needs random
access by position. TFDS's random-access data source (`builder.as_data_source`, ArrayRecord files) gives exactly
that; tf.data's own random access does not help in TF 2.21 (`tf.data.experimental.at` and the global shuffle work
only on in-memory sources), and streaming TFRecord shards with `skip()` and a shuffle buffer cannot resume exactly
and changes with the number of input pipelines. There is no TF op for ArrayRecord, so a micro-batch is read by one
`tf.numpy_function(..., stateful=False)` call (`py_function` is always stateful and breaks dataset serialization),
all positions at once through `__getitems__` (single-record reads are several times slower), as serialized
tf.Example protos; parsing and decoding (PNG, JPEG, casts) then run as TF ops on the whole batch. Only the records a
micro-batch needs are in memory, so a split much larger than memory trains.
"""

import os

import numpy as np
import tensorflow as tf

from trainer.errors import UserError

ARRAY_RECORD = "array_record"


def convert_command(builder) -> str:
  """The command that adds ArrayRecord files to a prepared TFRecord copy of `builder`'s dataset."""
  return (f"tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format={ARRAY_RECORD} "
          "(the tfds command needs `pip install apache-beam`), or rebuild it with `tfds build "
          f"{builder.name} --data_dir={builder.data_dir_root} --file_format={ARRAY_RECORD}`")


def has_array_record(builder) -> bool:
  """Whether `builder`'s prepared dataset has ArrayRecord files (as its format or an alternative one).

  Read from the info's proto: TFDS 4.9.10 restores `alternative_file_formats` from dataset_info.json into the
  proto but not into `DatasetInfo.available_file_formats()` for a builder defined in code."""
  info = builder.info
  return ARRAY_RECORD in {info.as_proto.file_format, *info.as_proto.alternative_file_formats}


class Reader:
  """The records of a split, by position, over its ArrayRecord shards (one reader per shard, opened once).

  Not TFDS's `ArrayRecordDataSource.__getitems__`: it starts a thread pool on every call, which made micro-batches
  of 64 digits about 2x slower to read here (30k against 57k examples/s in the pipeline). One `read` per shard and
  micro-batch instead, in C++.
  """

  def __init__(self, instructions) -> None:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    # readahead 0: the reads are random, as TFDS's own data source sets it.
    self._readers = [array_record_module.ArrayRecordReader(os.fspath(i.filename), "readahead_buffer_size:0")
                     for i in instructions]
    self._skips = np.array([i.skip for i in instructions], np.int64)
    self._starts = np.cumsum([0] + [i.take for i in instructions], dtype=np.int64)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def read(self, positions: np.ndarray) -> np.ndarray:
    """The serialized records at `positions` (in [0, len)), as a numpy object array of bytes."""
    shard = np.searchsorted(self._starts, positions, side="right") - 1
    offsets = positions - self._starts[shard] + self._skips[shard]
    out = np.empty(len(positions), dtype=object)
    for s in np.unique(shard):
      where = np.flatnonzero(shard == s)
      out[where] = self._readers[s].read(offsets[where].tolist())
    return out


def open_split(builder, split: str) -> Reader:
  """The split's records by position, from its ArrayRecord files, which are checked first.

  Raises UserError, naming the command that prepares them, when the dataset has no ArrayRecord copy, and naming
  the file when one is missing or holds fewer records than the dataset's metadata says (an interrupted copy).
  """
  from tensorflow_datasets.core.data_sources import base  # pylint: disable=import-outside-toplevel
  if not has_array_record(builder):
    raise UserError(f"TFDS dataset '{builder.name}' in {builder.data_dir} is prepared only as "
                    f"{builder.info.file_format.value}, and reading it from disk needs ArrayRecord files: "
                    f"{convert_command(builder)}")
  info = builder.info
  if info.file_format.value != ARRAY_RECORD:  # the split's file names follow the info's format
    info.set_file_format(ARRAY_RECORD, override=True, override_if_initialized=True)
  _check_files(builder, split)
  return Reader(base.file_instructions(info, split))


def _check_files(builder, split: str) -> None:
  """Every ArrayRecord shard of `split` exists and holds the records the metadata counts (a truncated file would
  otherwise fail, or read other records, in the middle of training)."""
  for part in split.split("+"):
    info = builder.info.splits[part.split("[")[0].strip()]
    for path, expected in zip(info.filepaths, info.shard_lengths):
      problem = _file_problem(os.fspath(path), expected)
      if problem:
        raise UserError(f"ArrayRecord file {path} {problem}: the copy of '{builder.name}' is damaged; delete "
                        f"{builder.data_dir} and prepare it again ({convert_command(builder)})")


def _file_problem(path: str, expected: int) -> str | None:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    return "is missing"
  try:
    reader = array_record_module.ArrayRecordReader(path)
    found = reader.num_records()
    reader.close()
  except Exception as e:  # pylint: disable=broad-except  (the C++ reader raises RuntimeError, ValueError, ...)
    return f"is unreadable ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
  return None if found == expected else f"holds {found} of its {expected} records"


def read(reader: Reader, positions: tf.Tensor) -> tf.Tensor:
  """The serialized records at int64 `positions` [b] of `reader`: one batched read, shape [b] tf.string."""
  # stateful=False: the read is a pure function of the positions, so tf.data may serialize and reorder it.
  serialized = tf.numpy_function(reader.read, [positions], tf.string, stateful=False, name="array_record_read")
  return tf.ensure_shape(serialized, positions.shape)


def decode(features, serialized: tf.Tensor) -> dict:
  """Parses and decodes a batch of serialized tf.Example protos with the TFDS `features`, as TF ops on the batch:
  the same values `builder.as_dataset` yields, stacked (fixed-shape features only)."""
  from tensorflow_datasets.core import example_parser, utils  # pylint: disable=import-outside-toplevel
  flat_info = utils.flatten_nest_dict(features.get_serialized_info())
  for key, info in flat_info.items():
    if any(d is None for d in info.shape) or info.sequence_rank:
      raise UserError(f"feature '{key}' has a variable shape {info.shape}; the disk reader reads fixed-shape "
                      "features only: use tfds_examples.source = 'memory'")
  specs = {k: example_parser._to_tf_example_spec(v) for k, v in flat_info.items()}  # pylint: disable=protected-access
  parsed = tf.io.parse_example(serialized, specs)
  parsed = {k: v if v.dtype == flat_info[k].tf_dtype else tf.cast(v, flat_info[k].tf_dtype)
            for k, v in parsed.items()}
  nested, raw = utils.pack_as_nest_dict(parsed, features.get_serialized_info()), _raw_tensors(features)
  batch = serialized.shape[0] if serialized.shape[0] is not None else -1  # static where known, as the gather's
  decoded = {}
  for name, feature in features.items():
    if name in raw:  # fixed-shape tensors stored as bytes: one decode_raw on the batch, not a map_fn per example
      decoded[name] = tf.reshape(tf.io.decode_raw(nested[name], raw[name][0]), [batch, *raw[name][1]])
    elif _image_decoder(feature):  # the op TFDS's decode_image picks, without its per-image format checks (1.4x)
      decoded[name] = tf.map_fn(lambda image, f=feature: _image_decoder(f)(image, channels=f.shape[-1]), nested[name],
                                fn_output_signature=tf.TensorSpec(feature.shape, tf.uint8), parallel_iterations=64)
    else:
      decoded[name] = feature.decode_batch_example(nested[name])
  return decoded


def _image_decoder(feature):
  """tf.io.decode_png or decode_jpeg for a fixed-shape uint8 Image feature that declares its encoding, else None
  (an Image without `encoding_format` may hold files of any format: TFDS's own decode then)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if (not isinstance(feature, tfds.features.Image) or feature.np_dtype != np.uint8
      or any(d is None for d in feature.shape)):
    return None
  return {"png": tf.io.decode_png, "jpeg": tf.io.decode_jpeg}.get(feature.encoding_format)


def _raw_tensors(features) -> dict:
  """{name: (dtype, shape)} of the top-level features that are fixed-shape numeric tensors stored as bytes."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  raw = {}
  for name, feature in features.items():
    info, stored = feature.get_tensor_info(), feature.get_serialized_info()
    if (type(feature) is tfds.features.Tensor and stored.tf_dtype == tf.string and info.tf_dtype != tf.string  # pylint: disable=unidiomatic-typecheck
        and all(d is not None for d in info.shape)):
      raw[name] = (info.tf_dtype, tuple(info.shape))
  return raw


def add_array_record(builder) -> None:
  """Writes an ArrayRecord copy beside `builder`'s prepared TFRecord files, shard by shard, the same records in the
  same order, and lists it in dataset_info.json as an alternative format: what `tfds convert_format` does, without
  the Apache Beam it needs. For small local datasets (trainer.tasks.digits), so both input paths can read them."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  for info in builder.info.splits.values():
    template = info.filename_template
    sources = sorted(template.sharded_filepaths(info.num_shards))
    targets = sorted(template.replace(filetype_suffix=ARRAY_RECORD).sharded_filepaths(info.num_shards))
    for source, target in zip(sources, targets):
      partial = f"{target}.incomplete"  # renamed when whole: an interrupted copy leaves no file that looks done
      # One record per chunk, as TFDS writes them (random reads), uncompressed: these copies are small, and zstd's
      # per-record start made reading 64 digits ~10% slower here.
      writer = array_record_module.ArrayRecordWriter(partial, "group_size:1,uncompressed")
      for record in tf.data.TFRecordDataset(os.fspath(source)).as_numpy_iterator():
        writer.write(record)
      writer.close()
      os.replace(partial, os.fspath(target))
  if ARRAY_RECORD not in builder.info.as_proto.alternative_file_formats:
    builder.info.as_proto.alternative_file_formats.append(ARRAY_RECORD)
  builder.info.write_dataset_info_json(builder.data_dir)
