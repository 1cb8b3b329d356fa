"""python -m benchmarks.input: examples/s of trainer's disk reader alone, on synthetic 64x64x3 uint8 records.

The records are the size of celeb_a's usual 64x64 crops (12 KiB of pixels each). `write_synthetic` writes a TFDS
dataset of them straight into ArrayRecord files (no TFDS writer, no shuffle: several GiB in seconds), which the
larger-than-memory test also uses. The benchmark then runs trainer's own input pipeline
(trainer.data.micro_batch_dataset over trainer.datasets.tfds_examples, source='disk', shuffled) and reports
examples/s of micro-batches of `--batch` examples, with nothing else running in the process.

    python -m benchmarks.input [--examples=50000] [--batch=256] [--compression=zstd:3] [--data_dir=/tmp/...]
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

SHAPE = (64, 64, 3)


class Synthetic64(tfds.core.GeneratorBasedBuilder):
  """64x64x3 uint8 images of random pixels with a label (position % 10), written by `write_synthetic`."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8, encoding="bytes"),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    raise NotImplementedError("written by benchmarks.input.write_synthetic")

  def _generate_examples(self):
    raise NotImplementedError("written by benchmarks.input.write_synthetic")


def write_synthetic(data_dir: str, examples: int, shards: int = 16, compression: str = "uncompressed") -> int:
  """Writes `examples` records into `shards` ArrayRecord files of a prepared TFDS dataset 'synthetic64' (split
  'train') under `data_dir`; returns the bytes written. Record i's label is i % 10; pixels are random.

  `compression` is ArrayRecord's option: TFDS writes 'zstd:3' (its default); 'uncompressed' writes ~5x faster."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import naming  # pylint: disable=import-outside-toplevel
  builder = Synthetic64(data_dir=data_dir, file_format="array_record")
  os.makedirs(builder.data_dir, exist_ok=True)
  size = int(np.prod(SHAPE))
  # One serialized example per label, pixels zero; a record is that with its own pixels spliced in.
  templates = [builder.info.features.serialize_example({"image": np.zeros(SHAPE, np.uint8), "label": label})
               for label in range(10)]
  offsets = [t.find(bytes(size)) for t in templates]
  template = naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name, split="train",
                                        filetype_suffix="array_record")
  lengths = [examples // shards + (s < examples % shards) for s in range(shards)]
  rng, written, position = np.random.default_rng(0), 0, 0
  for path, length in zip(template.sharded_filepaths(shards), lengths):
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), f"group_size:1,{compression}")
    pixels = rng.bytes(size * length)
    for j in range(length):
      t, o = templates[position % 10], offsets[position % 10]
      record = t[:o] + pixels[j * size:(j + 1) * size] + t[o + size:]
      writer.write(record)
      written, position = written + len(record), position + 1
    writer.close()
  split = tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=written, filename_template=template)
  builder.info.set_splits(tfds.core.SplitDict([split]))
  builder.info.write_to_directory(builder.data_dir)
  return written


def measure(data_dir: str, batch: int, seconds: float = 10.0) -> float:
  """Examples/s of trainer's shuffled disk input pipeline over 'synthetic64', one pipeline, after a warm-up."""
  from trainer import data, datasets  # pylint: disable=import-outside-toplevel
  examples = lambda i: datasets.tfds_examples(i, name="synthetic64", data_dir=data_dir, source="disk",
                                              preprocess=lambda features, _: features)
  iterator = iter(data.micro_batch_dataset(examples, tf.distribute.InputContext(), batch, 0))
  for _ in range(20):
    next(iterator)
  start, batches = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next(iterator)
    batches += 1
  return batches * batch / (time.perf_counter() - start)


FLAGS = flags.FLAGS
flags.DEFINE_integer("examples", 50_000, "records to write (12 KiB each)")
flags.DEFINE_integer("batch", 256, "examples per micro-batch")
flags.DEFINE_string("compression", "zstd:3", "ArrayRecord compression ('zstd:3' is TFDS's default, 'uncompressed')")
flags.DEFINE_string("data_dir", None, "where to write the records (default: a temporary directory, deleted after)")


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory(dir=FLAGS.data_dir) as data_dir:
    start = time.perf_counter()
    written = write_synthetic(data_dir, FLAGS.examples, compression=FLAGS.compression)
    print(f"wrote {FLAGS.examples} records, {written / 2**20:.0f} MiB ({FLAGS.compression}) in "
          f"{time.perf_counter() - start:.1f} s")
    rate = measure(data_dir, FLAGS.batch)
    print(f"disk reader: {rate:,.0f} examples/s ({rate * written / FLAGS.examples / 2**20:,.0f} MiB/s) in "
          f"micro-batches of {FLAGS.batch}, shuffled, one pipeline, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
