"""The 2-D ring of Gaussians, the standard mode-collapse benchmark (Metz et al. 2017, VEEGAN, PacGAN).

Data: a uniform mixture of `modes` Gaussians with std `stddev` on a circle of radius `radius`. Quality figures,
as in that literature, from generated samples: a sample is *high quality* if it lies within 3 std of a mode's
centre; a mode is *covered* if at least `min_per_mode` high-quality samples fall on it (PacGAN's rule: 20 of
2,500); and the reverse KL between the high-quality samples' mode histogram and the uniform one.
"""

import math
from typing import Mapping

import gin
import keras
import numpy as np
import tensorflow as tf

from trainer import data
from trainer.tasks import images


def _centers(modes: int, radius: float) -> np.ndarray:
  angles = 2 * math.pi * np.arange(modes) / modes
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@gin.configurable
def ring_examples(indices: tf.Tensor, modes: int = 8, radius: float = 2.0, stddev: float = 0.02,
                  latent_dim: int = 2, seed: int = 0) -> dict:
  """{'x': real points [b, 2], 'z': latents [b, latent_dim], 'eps': WGAN-GP mixing weights [b, 1]}."""
  mode = tf.minimum(tf.cast(data.uniform(indices, (), seed, stream=0) * modes, tf.int32), modes - 1)
  x = tf.gather(_centers(modes, radius), mode) + stddev * data.normal(indices, (2,), seed, stream=1)
  return {"x": x, "z": data.normal(indices, (latent_dim,), seed, stream=2),
          "eps": data.uniform(indices, (1,), seed, stream=3)}


def quality(samples: np.ndarray, modes: int, radius: float, stddev: float, min_per_mode: int) -> dict:
  """The figures of the module docstring for `samples` [n, 2]."""
  distances = np.linalg.norm(samples[:, None, :] - _centers(modes, radius)[None], axis=2)
  nearest = distances.argmin(axis=1)
  good = distances.min(axis=1) <= 3 * stddev
  per_mode = np.bincount(nearest[good], minlength=modes)
  figures = {"modes_covered": int(np.sum(per_mode >= min_per_mode)), "high_quality_fraction": float(good.mean())}
  if per_mode.sum():  # undefined without high-quality samples, so left out rather than reported as 0
    p = per_mode / per_mode.sum()
    figures["reverse_kl"] = float(np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-12) * modes), 0.0)))
  return figures


@gin.configurable
def ring_quality(models: Mapping[str, keras.Model], generator: str = "generator",
                 samples: int = 2500, modes: int = 8, radius: float = 2.0, stddev: float = 0.02,
                 min_per_mode: int = 20, seed: int = 12345) -> dict:
  """Generates `samples` points; returns their ring quality figures (see `quality`) and a scatter of them."""
  g = models[generator]
  z = data.normal(tf.range(samples, dtype=tf.int64), (g.input_shape[-1],), seed)
  points = tf.cast(g(z, training=False), tf.float32).numpy()
  return {**quality(points, modes, radius, stddev, min_per_mode),
          "samples": images.scatter(points, _centers(modes, radius), extent=1.5 * radius)}
