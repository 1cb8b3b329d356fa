"""GAN losses, per example. Only the phase's models are differentiated; the others are only called.

Every random number a loss needs (latent z, interpolation weight eps) comes from the batch, i.e. from the input
pipeline keyed by example index (trainer.data), so results do not depend on the replica count.

The non-saturating losses take an optional `condition`: the batch key of a vector (e.g. the one-hot label 'y')
that is appended to the generator's latent and to the critic's input, which makes a conditional GAN (Mirza &
Osindero 2014).
"""

from typing import Mapping

import gin
import keras
import tensorflow as tf

from trainer import data
from trainer.tasks.models import check_input, check_shape


def _conditioned(x: tf.Tensor, batch: dict, condition: str | None) -> tf.Tensor:
  return x if condition is None else tf.concat([x, tf.cast(batch[condition], x.dtype)], axis=1)


def _generate(models: Mapping[str, keras.Model], generator: str, batch: dict, condition: str | None,
              training: bool) -> tf.Tensor:
  """G(z [, condition]), checked against the shape of the real examples (shapes are static while tracing)."""
  g = models[generator]
  # float32 out of every model, whatever its dtype policy: losses are computed in float32 (trainer.precision)
  fake = tf.cast(g(check_input(g, generator, _conditioned(batch["z"], batch, condition)), training=training),
                 tf.float32)
  check_shape(fake.shape[1:], batch["x"].shape[1:],
              f"generator '{generator}' makes samples of shape {{ours}}, but the data's examples have shape "
              f"{{theirs}}; set {generator}/mlp.output_dim = {{size}}")
  return fake


def _score(models: Mapping[str, keras.Model], critic: str, x: tf.Tensor, batch: dict, condition: str | None,
           training: bool) -> tf.Tensor:
  """The critic's logit or score per example, D(x [, condition])."""
  d = models[critic]
  return tf.cast(d(check_input(d, critic, _conditioned(x, batch, condition)), training=training)[:, 0], tf.float32)


@gin.configurable
def wgan_gp_critic_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                        generator: str = "generator", penalty: float = 10.0) -> dict:
  """WGAN-GP critic loss (Gulrajani et al. 2017): D(fake) - D(real) + penalty * (|grad D(mix)| - 1)^2.

  Figures: loss, wasserstein (the critic's estimate D(real) - D(fake)) and gradient_penalty.
  """
  critic = models[model]
  real = check_input(critic, model, batch["x"])
  fake = _generate(models, generator, batch, None, training=False)
  eps = batch["eps"]
  mixed = eps * real + (1.0 - eps) * fake
  with tf.GradientTape() as tape:
    tape.watch(mixed)
    mixed_score = tf.cast(critic(mixed, training=True), tf.float32)
  slopes = tape.gradient(mixed_score, mixed)
  norm = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(slopes, [tf.shape(slopes)[0], -1])), axis=1) + 1e-12)
  gradient_penalty = tf.square(norm - 1.0)
  score = lambda x: _score(models, model, x, batch, None, training=True)
  wasserstein = score(real) - score(fake)
  return {"loss": -wasserstein + penalty * gradient_penalty, "wasserstein": wasserstein,
          "gradient_penalty": gradient_penalty}


@gin.configurable
def wgan_generator_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                        critic: str = "critic") -> dict:
  """WGAN generator loss: -D(G(z))."""
  fake = _generate(models, model, batch, None, training=True)
  return {"loss": -_score(models, critic, fake, batch, None, training=False)}


@gin.configurable
def ns_critic_loss(models: Mapping[str, keras.Model], batch: dict, model: str,
                   generator: str = "generator", condition: str | None = None) -> dict:
  """Non-saturating GAN discriminator loss (Goodfellow et al. 2014), on logits: -log D(real) - log(1 - D(fake))."""
  fake = _generate(models, generator, batch, condition, training=False)
  real_logit = _score(models, model, batch["x"], batch, condition, training=True)
  fake_logit = _score(models, model, fake, batch, condition, training=True)
  return {"loss": tf.nn.softplus(-real_logit) + tf.nn.softplus(fake_logit),
          "real_accuracy": tf.cast(real_logit > 0, tf.float32), "fake_accuracy": tf.cast(fake_logit < 0, tf.float32)}


@gin.configurable
def ns_generator_loss(models: Mapping[str, keras.Model], batch: dict, model: str, critic: str = "critic",
                      condition: str | None = None) -> dict:
  """Non-saturating generator loss: -log D(G(z))."""
  fake = _generate(models, model, batch, condition, training=True)
  return {"loss": tf.nn.softplus(-_score(models, critic, fake, batch, condition, training=False))}


@gin.configurable
def r1_penalty(models: Mapping[str, keras.Model], batch: dict, model: str, gamma: float = 1.0, interval: int = 1,
               condition: str | None = None) -> dict:
  """R1 regularisation of critic `model` (Mescheder et al. 2018): gamma / 2 * |grad_x D(x)|^2 on real examples.

  As StyleGAN2's lazy regularisation (Karras et al. 2020), it may run as a phase of its own in every `interval`-th
  cycle only (`Schedule.every`), sharing the critic's optimizer; the loss is then multiplied by `interval`, so its
  expected strength per update is the same as applied every time. Figures: loss and r1 (the squared gradient norm).
  """
  real = batch["x"]
  with tf.GradientTape() as tape:
    tape.watch(real)
    total = tf.reduce_sum(_score(models, model, real, batch, condition, training=True))
  slopes = tape.gradient(total, real)  # each example's logit depends on its own input only
  penalty = tf.reduce_sum(tf.square(tf.reshape(slopes, [tf.shape(slopes)[0], -1])), axis=1)
  return {"loss": penalty * (gamma / 2.0 * interval), "r1": penalty}


@gin.configurable
def ns_simultaneous_loss(models: Mapping[str, keras.Model], batch: dict, trains: tuple[str, ...],
                         generator: str = "generator", critic: str = "critic", condition: str | None = None) -> dict:
  """Generator and critic updated together from one forward pass (TF-GAN's joint train; keras.io's gan_ada),
  each descending its own non-saturating loss: a phase with `trains = ('generator', 'critic')`."""
  del trains
  fake = _generate(models, generator, batch, condition, training=True)
  real_logit = _score(models, critic, batch["x"], batch, condition, training=True)
  fake_logit = _score(models, critic, fake, batch, condition, training=True)
  return {f"loss/{generator}": tf.nn.softplus(-fake_logit),
          f"loss/{critic}": tf.nn.softplus(-real_logit) + tf.nn.softplus(fake_logit),
          "real_accuracy": tf.cast(real_logit > 0, tf.float32), "fake_accuracy": tf.cast(fake_logit < 0, tf.float32)}


@gin.configurable
def samples(models: Mapping[str, keras.Model], indices: tf.Tensor, generator: str = "generator",
            classes: int = 0, seed: int = 4321) -> tf.Tensor:
  """Generated sample per global index i, for evaluations (trainer.frechet.SampleFn): G(z_i [, one-hot label]),
  z_i keyed by (seed, i), the label i mod `classes` when the generator is conditional (`classes` > 0), so any
  10 consecutive indices hold every digit once. Float32, in inference mode."""
  g = models[generator]
  z = data.normal(indices, (g.input_shape[-1] - classes,), seed)
  if classes:
    z = tf.concat([z, tf.one_hot(tf.cast(indices % classes, tf.int32), classes)], axis=1)
  return tf.cast(g(z, training=False), tf.float32)
