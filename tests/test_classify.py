"""trainer.tasks.classify: the shipped digits scorer, the classifier's loss, the GAN score, and shape errors."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.tasks import classify, models
from trainer.errors import UserError


def test_the_shipped_scorer_is_at_least_95_percent_accurate_on_the_test_split():
  real = classify._real("test", None)  # pylint: disable=protected-access
  assert classify._accuracy(classify.load_scorer(), real["x"], real["label"]) >= 0.95  # pylint: disable=protected-access


def test_cross_entropy_is_per_example_and_counts_hits():
  model = models.mlp(4, 3, (), name="c")
  batch = {"x": tf.ones([5, 4]), "label": tf.constant([0, 1, 2, 0, 1])}
  figures = classify.cross_entropy({"c": model}, batch, "c")
  logits = model(batch["x"])
  expected = -tf.math.log(tf.gather(tf.nn.softmax(logits), batch["label"], axis=1, batch_dims=1))
  np.testing.assert_allclose(figures["loss"], expected, rtol=1e-5)
  assert figures["accuracy"].shape == (5,) and set(np.unique(figures["accuracy"])) <= {0.0, 1.0}


def test_a_model_that_cannot_take_the_images_names_both_shapes():
  with pytest.raises(UserError, match=r"model 'c' takes inputs of shape \(784,\), but the data gives \(64,\)"):
    classify.cross_entropy({"c": models.mlp(784, 10, (), name="c")}, {"x": tf.ones([2, 64]),
                                                                         "label": tf.zeros([2], tf.int32)}, "c")


def test_an_untrained_generator_scores_near_chance():
  generator = models.mlp(42, 64, (32,), output_activation="tanh", name="generator")
  figures = classify.digits_gan_quality({"generator": generator}, per_class=20)
  assert figures["accuracy"] < 0.3 and figures["classes_drawn"] <= 2
  assert figures["real_accuracy"] >= 0.95 and 0 < figures["diversity"]
