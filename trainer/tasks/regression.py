"""A synthetic regression task: y = x . w + noise, every example a pure function of its index (see trainer.data)."""

from typing import Mapping

import gin
import keras
import tensorflow as tf

from trainer import data

_WEIGHTS = (1.0, -2.0, 3.0, 0.5, -1.5, 2.5, -0.5, 1.0)


@gin.configurable
def regression_examples(indices: tf.Tensor, input_dim: int = 4, noise: float = 0.1, seed: int = 0) -> dict:
  """{'x': [b, input_dim] standard normal, 'y': [b, 1]} with fixed true weights and Gaussian noise."""
  x = data.normal(indices, (input_dim,), seed, stream=0)
  w = tf.constant([_WEIGHTS[i % len(_WEIGHTS)] for i in range(input_dim)], tf.float32)
  y = tf.reduce_sum(x * w, axis=1, keepdims=True) + noise * data.normal(indices, (1,), seed, stream=1)
  return {"x": x, "y": y}


@gin.configurable
def squared_error(models: Mapping[str, keras.Model], batch: dict, model: str) -> dict:
  """Per-example mean squared error of `model`'s prediction of y."""
  error = tf.cast(models[model](batch["x"], training=True), tf.float32) - batch["y"]
  return {"loss": tf.reduce_mean(tf.square(error), axis=1)}


@gin.configurable
def absolute_error(models: Mapping[str, keras.Model], batch: dict, model: str) -> dict:
  """Per-example mean absolute error of `model`'s prediction of y."""
  error = tf.cast(models[model](batch["x"], training=True), tf.float32) - batch["y"]
  return {"loss": tf.reduce_mean(tf.abs(error), axis=1)}


@gin.configurable
def regression_quality(models: Mapping[str, keras.Model], examples: int = 4096, first_index: int = 2**40) -> dict:
  """Each model's mean squared and absolute error on held-out examples (indices far beyond any training run's)."""
  batch = regression_examples(tf.range(first_index, first_index + examples, dtype=tf.int64),
                              input_dim=next(iter(models.values())).input_shape[-1])
  figures = {}
  for name, model in models.items():
    error = tf.cast(model(batch["x"], training=False), tf.float32) - batch["y"]
    figures[f"{name}/mse"] = float(tf.reduce_mean(tf.square(error)))
    figures[f"{name}/mae"] = float(tf.reduce_mean(tf.abs(error)))
  return figures
