"""Model builders. Each returns a built Keras model, so optimizers can create their slots before the first step."""

import math
from typing import Sequence

import gin
import keras
import tensorflow as tf

from trainer.errors import UserError


@gin.configurable
def mlp(
    input_dim: int = gin.REQUIRED,
    output_dim: int = gin.REQUIRED,
    hidden: Sequence[int] = (128, 128),
    activation: str = "relu",
    output_activation: str | None = None,
    name: str = "mlp",
) -> keras.Model:
  """A fully connected network: `input_dim` -> hidden layers -> `output_dim`.

  No dropout and no batch normalisation by default: both break the equality of 1-replica and N-replica training
  (dropout masks repeat across replicas; BatchNorm statistics are per replica and per micro-batch).
  """
  inputs = keras.Input((input_dim,), name=f"{name}_input")
  x = inputs
  for i, width in enumerate(hidden):
    x = keras.layers.Dense(width, activation=activation, name=f"{name}_dense{i}")(x)
  outputs = keras.layers.Dense(output_dim, activation=output_activation, name=f"{name}_out")(x)
  return keras.Model(inputs, outputs, name=name)


def check_shape(ours: Sequence[int], theirs: Sequence[int], message: str) -> None:
  """Raises UserError(message) when a model's example shape `ours` is not the data's `theirs`; `message` may use
  {ours}, {theirs} and {size} (the size that fits the data). Shapes are static while tracing, so this is one clear
  line instead of Keras's traceback from inside the compiled step."""
  ours, theirs = tuple(ours), tuple(theirs)
  if ours != theirs:
    raise UserError(message.format(ours=ours, theirs=theirs, size=math.prod(theirs)))


def check_input(model: keras.Model, name: str, x: tf.Tensor) -> tf.Tensor:
  """Returns x, or raises UserError naming both shapes when model `name` cannot take it."""
  check_shape(model.input_shape[1:], x.shape[1:],
              f"model '{name}' takes inputs of shape {{ours}}, but the data gives {{theirs}}; set the model's "
              f"input_dim to match the data (e.g. {name}/mlp.input_dim = {{size}})")
  return x
