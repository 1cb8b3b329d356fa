"""trainer.tasks.conv: the builders' shapes, the label as feature maps, and the conv digits GAN's quality."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.processes import run
from trainer.errors import UserError
from trainer.tasks import conv


def test_the_builders_keep_the_flat_image_contract():
  generator = conv.conv_generator(latent_dim=6, classes=10, image_shape=(8, 8, 1), channels=(16, 8))
  critic = conv.conv_critic(classes=10, image_shape=(8, 8, 1), channels=(8, 16), dropout_rate=0.5)
  classifier = conv.conv_classifier(image_shape=(8, 8, 1), channels=(8, 16))
  assert (generator.input_shape, generator.output_shape) == ((None, 16), (None, 64))
  assert (critic.input_shape, critic.output_shape) == ((None, 74), (None, 1))
  assert (classifier.input_shape, classifier.output_shape) == ((None, 64), (None, 10))
  samples = generator(np.random.RandomState(0).normal(size=(5, 16)).astype(np.float32))
  assert float(tf.reduce_max(tf.abs(samples))) <= 1.0  # tanh: in the data's [-1, 1]
  assert [type(l).__name__ for l in classifier.layers].count("BatchNormalization") == 1  # not on the first block


def test_the_critic_sees_the_label():
  critic = conv.conv_critic(classes=10, channels=(8, 16))
  image = np.random.RandomState(1).uniform(-1, 1, size=(1, 64)).astype(np.float32)
  scores = [float(critic(np.concatenate([image, np.eye(10)[[c]]], axis=1).astype(np.float32))[0, 0]) for c in (3, 7)]
  assert abs(scores[0] - scores[1]) > 1e-4


def test_an_image_that_does_not_halve_is_one_line():
  with pytest.raises(UserError, match=r"^image_shape \(6, 6, 1\) does not halve 2 times; give sides divisible by 4"):
    conv.conv_generator(latent_dim=4, image_shape=(6, 6, 1), channels=(8, 4))


@pytest.mark.slow
def test_the_conv_digits_gan_draws_every_digit(tmp_path):
  # A shortened run of the shipped config (the README's figures are from the full 8,000 updates).
  result = run("-m", "trainer.main", "--gin_file=configs/gan_digits_conv.gin", f"--model_dir={tmp_path}",
               "--gin_bindings=TRAIN_STEPS=2400", "--gin_bindings=train.eval_every=0")
  assert result.returncode == 0, result.stderr[-3000:]
  figures = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "eval/accuracy" in r][-1]
  assert figures["eval/classes_drawn"] >= 9 and figures["eval/accuracy"] >= 0.75, figures  # measured: 10, 0.87
  assert figures["eval/diversity"] >= 0.6, figures  # measured 0.82: not one image per digit
