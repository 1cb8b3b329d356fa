"""A user's own model and loss, outside the trainer package: a gin file imports this module (`import my_models`)
and trains it with `python -m trainer.main`, exactly as the shipped configs import trainer.tasks.

    PYTHONPATH=examples python -m trainer.main --gin_file=examples/my_models.gin --model_dir=runs/my_models
"""

from typing import Mapping

import gin
import keras
import tensorflow as tf


@gin.configurable
def residual_mlp(input_dim: int = gin.REQUIRED, width: int = 32, blocks: int = 2, name: str = "residual") -> keras.Model:
  """x -> Dense(width) -> `blocks` residual blocks (x + Dense(relu(Dense(x)))) -> Dense(1)."""
  inputs = keras.Input((input_dim,), name=f"{name}_input")
  x = keras.layers.Dense(width, name=f"{name}_in")(inputs)
  for i in range(blocks):
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_block{i}_a")(x)
    x = keras.layers.Add(name=f"{name}_block{i}_add")([x, keras.layers.Dense(width, name=f"{name}_block{i}_b")(h)])
  return keras.Model(inputs, keras.layers.Dense(1, name=f"{name}_out")(x), name=name)


@gin.configurable
def huber(models: Mapping[str, keras.Model], batch: dict, model: str, delta: float = 0.5) -> dict:
  """Per-example Huber loss of `model`'s prediction of batch['y'] (a trainer LossFn), and the squared error."""
  error = models[model](batch["x"], training=True)[:, 0] - batch["y"][:, 0]
  small = tf.abs(error) <= delta
  loss = tf.where(small, 0.5 * tf.square(error), delta * (tf.abs(error) - 0.5 * delta))
  return {"loss": loss, "squared_error": tf.square(error)}
