"""A user's own model and loss, outside the trainer package: a gin file imports this module (`import my_models`)
and trains it with `python -m trainer.main`, exactly as the shipped configs import trainer.tasks.

    PYTHONPATH=examples python -m trainer.main --gin_file=examples/my_models.gin --model_dir=runs/my_models

or, with trainer installed (`pip install .`), from this directory: python -m trainer.main --gin_file=my_models.gin ...
"""

from typing import Mapping

import gin
import keras
import tensorflow as tf

from trainer import dropout


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


@gin.configurable
def small_convnet(image_shape: tuple = (8, 8, 1), classes: int = 10, dropout_rate: float = 0.25,
                  name: str = "mine") -> keras.Model:
  """A user's conv classifier with BatchNorm and dropout: flat image -> 2 x (conv, BatchNorm, relu) -> pooled ->
  dropout -> logits. BatchNorm momentum 0.9 (Keras's 0.99 needs ~2x the updates on a short job). trainer's
  Dropout keys its masks by example index, so it works alike on any replica count (keras.layers.Dropout would
  draw one mask for all replicas, and trainer warns about it)."""
  inputs = keras.Input((image_shape[0] * image_shape[1] * image_shape[2],), name=f"{name}_input")
  x = keras.layers.Reshape(image_shape)(inputs)
  for i, width in enumerate((16, 32)):
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x))
    x = keras.layers.MaxPooling2D()(x) if i == 0 else keras.layers.GlobalAveragePooling2D()(x)
  x = dropout.Dropout(dropout_rate, name=f"{name}_dropout")(x)
  return keras.Model(inputs, keras.layers.Dense(classes, name=f"{name}_out")(x), name=name)
