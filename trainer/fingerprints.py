"""What data the example indices mean, saved in the checkpoint so a resume on other data is refused.

A global example index only names an example through the dataset it is applied to (trainer.data): the same
micro-batch counter over another version, split or re-prepared copy of a dataset would silently continue on other
examples, and a shuffle over a different size is another permutation. So an ExamplesFn that reads prepared data
`note`s a fingerprint of it (name, version, split, example count, shard lengths) while its pipeline is built,
trainer.train collects it around building the input (`collecting`), keeps it in the checkpoint, and a restored run
whose data differs stops with one line before anything is saved (`check`).

The fingerprint describes the data, not how it is read: the in-memory and the on-disk paths of one prepared
dataset read the same examples for the same index, so a run may resume on either.
"""

import contextlib
from typing import Iterator

from trainer.errors import UserError

_collectors: list[list[str]] = []  # the open `collecting` blocks, innermost last (building the input is one thread)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
  """Collects the fingerprints noted while the block runs (each distinct one once, in order)."""
  found: list[str] = []
  _collectors.append(found)
  try:
    yield found
  finally:
    _collectors.remove(found)


def note(fingerprint: str) -> None:
  """Called by an ExamplesFn as its pipeline is built: the data it reads is `fingerprint`."""
  for found in _collectors:
    if fingerprint not in found:
      found.append(fingerprint)


def combine(found: list[str]) -> str:
  """One string for the checkpoint ('' when the examples come from no prepared data, e.g. generated ones)."""
  return " + ".join(found)


def check(saved: str, current: str, checkpoint_dir: str) -> None:
  """Raises UserError when a checkpoint written on data `saved` is resumed on data `current`.

  A checkpoint without a fingerprint (a fresh run, or one written before fingerprints existed) accepts any data.
  """
  if saved and saved != current:
    raise UserError(f"the checkpoint in {checkpoint_dir} was trained on [{saved}] but this run reads "
                    f"[{current or 'no prepared dataset'}]: resume on the same data, or use a new --model_dir")


def describe(builder, split: str) -> str:
  """The fingerprint of `split` of `builder`'s prepared TFDS dataset."""
  parts = []
  for part in split.split("+"):
    info = builder.info.splits[part.split("[")[0].strip()]
    parts.append(f"{part.strip()}: {info.num_examples} examples in shards {list(info.shard_lengths)}")
  return f"{builder.info.full_name} {', '.join(parts)}"
