"""The fixed feature networks of the Fréchet distance (trainer.tasks.features)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.errors import UserError
from trainer.tasks import classify, features


def test_the_classifier_features_are_its_last_hidden_layer():
  network = features.classifier_features()
  scorer = classify.load_scorer()
  x = np.random.default_rng(0).uniform(-1, 1, size=(5, 64)).astype(np.float32)
  hidden = np.maximum(x @ scorer.get_weights()[0] + scorer.get_weights()[1], 0)
  assert network.output_shape == (None, 256)
  np.testing.assert_allclose(network(x, training=False), hidden, rtol=1e-5, atol=1e-5)


def test_pool_features_load_local_weights_resize_and_repeat_grey_images(tmp_path):
  # InceptionV3 at its smallest input size (75), with random weights written to a local file: the interface and
  # the loading of FID's network, at a tenth of the cost of 299 x 299.
  keras.utils.set_random_seed(0)
  backbone = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg", input_shape=(75, 75, 3))
  path = str(tmp_path / "inception.weights.h5")
  backbone.save_weights(path)
  network = features.pool_features(weights=path, image_shape=(8, 8, 1), size=75)
  images = np.random.default_rng(0).uniform(-1, 1, size=(2, 8, 8, 1)).astype(np.float32)
  resized = tf.image.resize(images, (75, 75), method="bilinear")
  expected = backbone(tf.concat([resized] * 3, axis=-1), training=False)
  assert network.output_shape == (None, 2048)
  np.testing.assert_allclose(network(images, training=False), expected, rtol=1e-5, atol=1e-6)


def test_a_missing_weights_file_is_one_line_and_nothing_downloads(tmp_path):
  with pytest.raises(UserError, match="does not exist; give the path of a local weights file"):
    features.pool_features(weights=str(tmp_path / "none.h5"), image_shape=(32, 32, 3))
