"""Model builders. Each returns a built Keras model, so optimizers can create their slots before the first step."""

from typing import Sequence

import gin
import keras


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
