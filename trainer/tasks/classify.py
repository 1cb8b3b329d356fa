"""Digit classification: the classifier's loss and test accuracy, and the fixed classifier that scores a GAN.

The GAN score uses ONE shipped classifier (trainer/tasks/assets/digits_classifier.npz, trained by
configs/classifier_digits.gin) for every run, like FID's fixed Inception network: scores are comparable across
runs only because the judge never changes. Regenerate it with

    python -m trainer.main --gin_file=configs/classifier_digits.gin --model_dir=runs/classifier_digits
    cp runs/classifier_digits/classifier.npz trainer/tasks/assets/digits_classifier.npz
"""

import os
from typing import Mapping

import gin
import keras
import numpy as np
import tensorflow as tf

from trainer import data, datasets
from trainer.tasks import images, models

SCORER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "digits_classifier.npz")


@gin.configurable
def cross_entropy(models_: Mapping[str, keras.Model], batch: dict, model: str) -> dict:
  """Per-example softmax cross-entropy of `model`'s logits for batch['label'], and its accuracy."""
  logits = tf.cast(models_[model](models.check_input(models_[model], model, batch["x"]), training=True), tf.float32)
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["label"], logits=logits)
  return {"loss": loss, "accuracy": tf.cast(tf.equal(tf.argmax(logits, 1, tf.int32), batch["label"]), tf.float32)}


def _real(split: str, data_dir: str | None) -> dict:
  arrays = datasets.load("digits", split, data_dir)
  return datasets.images_and_labels(arrays, tf.range(len(arrays["label"]), dtype=tf.int64))


def _accuracy(model: keras.Model, x, labels) -> float:
  return float(np.mean(np.argmax(model(x, training=False), axis=1) == np.asarray(labels)))


@gin.configurable
def classifier_quality(models_: Mapping[str, keras.Model], model: str = "classifier", split: str = "test",
                       data_dir: str | None = None) -> dict:
  """Accuracy on the digits test split."""
  real = _real(split, data_dir)
  return {"test_accuracy": _accuracy(models_[model], real["x"], real["label"])}


@gin.configurable
def save_scorer(models_: Mapping[str, keras.Model], model_dir: str, model: str = "classifier") -> str:
  """Writes classifier `model` as model_dir/classifier.npz, the format `load_scorer` reads (see module doc)."""
  classifier = models_[model]
  hidden = [layer.units for layer in classifier.layers[1:-1]]
  path = os.path.join(model_dir, "classifier.npz")
  np.savez(path, hidden=np.array(hidden), **{f"w{i}": np.array(w) for i, w in enumerate(classifier.get_weights())})
  return path


def load_scorer(path: str = SCORER) -> keras.Model:
  """The classifier saved by `save_scorer`, rebuilt as an mlp."""
  saved = np.load(path)
  weights = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]
  scorer = models.mlp(weights[0].shape[0], weights[-1].shape[0], tuple(int(h) for h in saved["hidden"]),
                      name="scorer")
  scorer.set_weights(weights)
  return scorer


@gin.configurable
def digits_gan_quality(models_: Mapping[str, keras.Model], generator: str = "generator",
                       per_class: int = 100, scorer_path: str = SCORER, min_share: float = 0.5,
                       data_dir: str | None = None, seed: int = 4321) -> dict:
  """Scores a conditional digits generator with the fixed classifier, on `per_class` samples of each digit.

  accuracy: the share of samples classified as the digit they were generated for; confidence: the classifier's
  mean top probability; classes_drawn: digits recognised in at least `min_share` of their samples;
  real_accuracy: the same classifier on the real test split (the ceiling); samples: 10 of each digit, one row per
  digit; diversity: the mean distance between
  two samples of the same digit, relative to the same for real test images (1: as varied as the data; a generator
  that draws one image per digit scores 0 however well it is classified).
  """
  g = models_[generator]
  labels = np.repeat(np.arange(10), per_class)
  z = data.normal(tf.range(len(labels), dtype=tf.int64), (g.input_shape[-1] - 10,), seed)
  fake = tf.cast(g(tf.concat([z, tf.one_hot(labels, 10)], axis=1), training=False), tf.float32)
  scorer = load_scorer(scorer_path)
  probs = tf.nn.softmax(scorer(fake, training=False)).numpy()
  hits = np.argmax(probs, axis=1) == labels
  real = _real("test", data_dir)
  real_labels = real["label"].numpy()
  spread = lambda x: float(np.mean(np.linalg.norm(x[:, None] - x[None], axis=2)))
  diversity = np.mean([spread(fake.numpy()[labels == c]) / spread(real["x"].numpy()[real_labels == c])
                       for c in range(10)])
  return {"accuracy": float(hits.mean()), "confidence": float(probs.max(axis=1).mean()),
          "classes_drawn": int(sum(hits[labels == c].mean() >= min_share for c in range(10))),
          "diversity": float(diversity), "real_accuracy": _accuracy(scorer, real["x"], real_labels),
          "samples": images.grid(fake.numpy().reshape(10, per_class, 8, 8, 1)[:, :10].reshape(-1, 8, 8, 1), 10)}
