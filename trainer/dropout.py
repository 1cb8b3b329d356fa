"""Dropout whose mask is a pure function of the global example index, so 1 replica and N replicas drop the same units.

Keras's Dropout draws its mask from a SeedGenerator whose state is a mirrored variable advanced identically on
every replica: under MirroredStrategy all replicas draw the SAME mask for their different examples (measured with
Keras 3.15.1, tests/test_dropout.py), so N replicas regularise like one, and the masks depend on how the batch is
split. trainer's `Dropout` keys each example's mask by (layer seed, layer name, call number within the forward
pass, global example index): the global index is unique across the whole run (epoch e of N examples reads indices
[e N, (e + 1) N), trainer.data), so an example gets a fresh mask every time it is seen; the call number separates
two calls of one layer on the same example (a critic scoring the real and the fake image); and nothing depends on
the replica, the micro-batch split or a random state, so resume is exact and 1 replica ≡ N replicas holds with
dropout too.

The step (trainer.step) opens `keyed(batch)` around each forward pass of the loss; a trainer Dropout called with
training=True outside it (plain Keras use) behaves as Keras's own.
"""

import contextlib
import threading
import zlib
from typing import Any, Iterator, Mapping

import keras
import tensorflow as tf
from absl import logging

from trainer import data
from trainer.errors import UserError

_context = threading.local()


@contextlib.contextmanager
def keyed(batch: Any) -> Iterator[None]:
  """Within: trainer Dropout layers key their masks by `batch[INDEX]` (None when the batch has no index)."""
  indices = batch.get(data.INDEX) if isinstance(batch, Mapping) else None
  outer = getattr(_context, "state", None)
  _context.state = {"indices": indices, "calls": {}}
  try:
    yield
  finally:
    _context.state = outer


@keras.saving.register_keras_serializable(package="trainer")
class Dropout(keras.layers.Dropout):
  """keras.layers.Dropout (same arguments) whose training mask is keyed by the global example index inside
  trainer's step; `seed` (an int, default 0) and the layer's name select its stream."""

  def call(self, inputs, training=False):
    state = getattr(_context, "state", None)
    if not training or self.rate == 0 or state is None:
      return super().call(inputs, training=training)
    if state["indices"] is None:
      raise UserError(f"layer '{self.name}' (trainer.dropout.Dropout) needs the batch's global example indices: "
                      "return a dict from the examples function (trainer.data adds its 'index' key)")
    calls = state["calls"]
    call = calls[self.name] = calls.get(self.name, -1) + 1
    shape = tuple(inputs.shape[1:])
    if self.noise_shape is not None:  # a broadcast mask (e.g. a channel per example, SpatialDropout's form)
      shape = tuple(d if n is None else n for d, n in zip(shape, self.noise_shape[1:]))
    stream = (zlib.crc32(self.name.encode()) << 8) + call
    u = data.uniform(tf.cast(state["indices"], tf.int64), shape, int(self.seed or 0), stream)
    keep = tf.cast(u >= self.rate, inputs.dtype)
    return inputs * keep / tf.cast(1.0 - self.rate, inputs.dtype)


# Keras layers whose randomness comes from a SeedGenerator: under a strategy every replica draws the same numbers.
_CORRELATED = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
               keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
               keras.layers.AlphaDropout)


def correlated_layers(model: keras.Model) -> list[str]:
  """Names of `model`'s random layers that would draw the same numbers on every replica."""
  return [layer.name for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, _CORRELATED) and not isinstance(layer, Dropout)]


def warn_correlated(name: str, model: keras.Model, replicas: int) -> list[str]:
  """Logs one warning line when model `name` has Keras random layers and trains on several replicas."""
  found = correlated_layers(model)
  if found and replicas > 1:
    logging.warning("model '%s' has Keras random layers (%s) that draw the same mask on all %d replicas; use "
                    "trainer.dropout.Dropout, keyed by example index", name, ", ".join(found), replicas)
  return found
