"""GAN losses, per example. Only the phase's model is differentiated; the other model is only called.

Every random number a loss needs (latent z, interpolation weight eps) comes from the batch, i.e. from the input
pipeline keyed by example index (trainer.data), so results do not depend on the replica count.
"""

from typing import Mapping

import gin
import keras
import tensorflow as tf


@gin.configurable
def wgan_gp_critic_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                        generator: str = "generator", penalty: float = 10.0) -> dict:
  """WGAN-GP critic loss (Gulrajani et al. 2017): D(fake) - D(real) + penalty * (|grad D(mix)| - 1)^2.

  Figures: loss, wasserstein (the critic's estimate D(real) - D(fake)) and gradient_penalty.
  """
  critic = models[model]
  real = batch["x"]
  fake = models[generator](batch["z"], training=False)
  eps = batch["eps"]
  mixed = eps * real + (1.0 - eps) * fake
  with tf.GradientTape() as tape:
    tape.watch(mixed)
    mixed_score = critic(mixed, training=True)
  slopes = tape.gradient(mixed_score, mixed)
  norm = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(slopes, [tf.shape(slopes)[0], -1])), axis=1) + 1e-12)
  gradient_penalty = tf.square(norm - 1.0)
  wasserstein = critic(real, training=True)[:, 0] - critic(fake, training=True)[:, 0]
  return {"loss": -wasserstein + penalty * gradient_penalty, "wasserstein": wasserstein,
          "gradient_penalty": gradient_penalty}


@gin.configurable
def wgan_generator_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                        critic: str = "critic") -> dict:
  """WGAN generator loss: -D(G(z))."""
  fake = models[model](batch["z"], training=True)
  return {"loss": -models[critic](fake, training=False)[:, 0]}


@gin.configurable
def ns_critic_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                   generator: str = "generator") -> dict:
  """Non-saturating GAN discriminator loss (Goodfellow et al. 2014), on logits: -log D(real) - log(1 - D(fake))."""
  critic = models[model]
  real_logit = critic(batch["x"], training=True)[:, 0]
  fake_logit = critic(models[generator](batch["z"], training=False), training=True)[:, 0]
  return {"loss": tf.nn.softplus(-real_logit) + tf.nn.softplus(fake_logit),
          "real_accuracy": tf.cast(real_logit > 0, tf.float32), "fake_accuracy": tf.cast(fake_logit < 0, tf.float32)}


@gin.configurable
def ns_generator_loss(models: Mapping[str, keras.Model], batch: dict, model: str, critic: str = "critic") -> dict:
  """Non-saturating generator loss: -log D(G(z))."""
  fake_logit = models[critic](models[model](batch["z"], training=True), training=False)[:, 0]
  return {"loss": tf.nn.softplus(-fake_logit)}
