"""Convolutional builders: a DCGAN-style conditional generator and critic (Radford et al. 2016), and a classifier.

They keep trainer's data contract for images: examples are flat vectors (`images_and_labels` flattens them) and a
conditional GAN appends the one-hot label to the generator's latent and to the critic's input (trainer.tasks.gan),
so each model reshapes at its input and flattens at its output, and the losses and shape checks are the MLPs'.
The critic sees the label as constant feature maps beside the pixels (as in conditional DCGANs); the generator
sees it in its first dense layer. Transposed convolutions double the resolution per block, from `image_shape` / 2^b.
"""

from typing import Sequence

import gin
import keras

from trainer import dropout
from trainer.errors import UserError


def _start(image_shape: Sequence[int], blocks: int) -> tuple[int, int]:
  height, width = image_shape[0] >> blocks, image_shape[1] >> blocks
  if height << blocks != image_shape[0] or width << blocks != image_shape[1] or not height or not width:
    raise UserError(f"image_shape {tuple(image_shape)} does not halve {blocks} times; give sides divisible by "
                    f"{2 ** blocks} or fewer channels in the conv builder's `channels`")
  return height, width


def _normalised(x, batch_norm: bool, name: str):
  return keras.layers.BatchNormalization(name=f"{name}_bn")(x) if batch_norm else x


@gin.configurable
def conv_generator(latent_dim: int = gin.REQUIRED, classes: int = 0, image_shape: Sequence[int] = (8, 8, 1),
                   channels: Sequence[int] = (128, 64), batch_norm: bool = False,
                   name: str = "generator") -> keras.Model:
  """[z, one-hot] -> Dense to (H / 2^b, W / 2^b, channels[0]) -> b stride-2 transposed convs -> tanh image, flat.

  `channels` lists each block's width (b = len(channels)); `batch_norm` adds BatchNorm after every hidden layer
  (DCGAN's generator has it; the shipped digits job trains better without it: configs/gan_digits_conv.gin)."""
  height, width = _start(image_shape, len(channels))
  inputs = keras.Input((latent_dim + classes,), name=f"{name}_input")
  x = keras.layers.Dense(height * width * channels[0], name=f"{name}_project")(inputs)
  x = keras.layers.LeakyReLU(0.2)(_normalised(keras.layers.Reshape((height, width, channels[0]))(x), batch_norm,
                                               f"{name}_project"))
  for i, c in enumerate(channels[1:]):
    x = keras.layers.Conv2DTranspose(c, 4, strides=2, padding="same", name=f"{name}_up{i}")(x)
    x = keras.layers.LeakyReLU(0.2)(_normalised(x, batch_norm, f"{name}_up{i}"))
  x = keras.layers.Conv2DTranspose(image_shape[2], 4, strides=2, padding="same", activation="tanh",
                                   name=f"{name}_out")(x)
  return keras.Model(inputs, keras.layers.Flatten()(x), name=name)


def _features(x, channels: Sequence[int], batch_norm: bool, rate: float, name: str):
  """Stride-2 conv blocks: conv, optional BatchNorm, LeakyReLU(0.2), optional trainer Dropout (keyed by example)."""
  for i, c in enumerate(channels):
    x = keras.layers.Conv2D(c, 4, strides=2, padding="same", name=f"{name}_conv{i}")(x)
    x = keras.layers.LeakyReLU(0.2)(_normalised(x, batch_norm and i > 0, f"{name}_conv{i}"))
    if rate:
      x = dropout.Dropout(rate, name=f"{name}_dropout{i}")(x)
  return keras.layers.Flatten()(x)


@gin.configurable
def conv_critic(classes: int = 0, image_shape: Sequence[int] = (8, 8, 1), channels: Sequence[int] = (64, 128),
                batch_norm: bool = False, dropout_rate: float = 0.0, name: str = "critic") -> keras.Model:
  """[flat image, one-hot] -> image with the label as `classes` constant maps -> stride-2 convs -> one logit.

  No BatchNorm on the first block (DCGAN); none by default, as WGAN-GP's penalty needs per-example gradients."""
  _start(image_shape, len(channels))
  pixels = image_shape[0] * image_shape[1] * image_shape[2]
  inputs = keras.Input((pixels + classes,), name=f"{name}_input")
  x = keras.layers.Reshape(tuple(image_shape))(inputs[:, :pixels])
  if classes:
    maps = keras.layers.Reshape((1, 1, classes))(inputs[:, pixels:])
    x = keras.layers.Concatenate()([x, keras.ops.tile(maps, (1, image_shape[0], image_shape[1], 1))])
  x = _features(x, channels, batch_norm, dropout_rate, name)
  return keras.Model(inputs, keras.layers.Dense(1, name=f"{name}_out")(x), name=name)


@gin.configurable
def conv_classifier(classes: int = 10, image_shape: Sequence[int] = (8, 8, 1), channels: Sequence[int] = (32, 64),
                    batch_norm: bool = True, dropout_rate: float = 0.25, name: str = "classifier") -> keras.Model:
  """Flat image -> stride-2 conv blocks (BatchNorm from the second, trainer Dropout) -> `classes` logits."""
  _start(image_shape, len(channels))
  inputs = keras.Input((image_shape[0] * image_shape[1] * image_shape[2],), name=f"{name}_input")
  x = _features(keras.layers.Reshape(tuple(image_shape))(inputs), channels, batch_norm, dropout_rate, name)
  return keras.Model(inputs, keras.layers.Dense(classes, name=f"{name}_out")(x), name=name)
