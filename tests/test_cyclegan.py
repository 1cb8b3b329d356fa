"""trainer.tasks.cyclegan: unpaired data keyed by index, the joint losses' values and gradients, the evaluation, and
configs/cyclegan_digits.gin shrunk to 4 updates."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config, datasets, train
from trainer.errors import UserError
from trainer.tasks import cyclegan, models

PIXELS = 64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATORS, CRITICS = ("g_ab", "g_ba"), ("d_a", "d_b")


def _linear(name: str, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
  """A one-layer mlp with fixed weights: exact maps to test the losses against."""
  model = models.mlp(kernel.shape[0], kernel.shape[1], (), name=name)
  model.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
  return model


def _transposer(name: str):
  """x @ P with P the 0/1 permutation matrix of the 8x8 transpose: the exact domain map, as a model."""
  return _linear(name, cyclegan.transpose(tf.eye(PIXELS)).numpy(), np.zeros(PIXELS))


def _zeros(name: str):
  return _linear(name, np.zeros((PIXELS, PIXELS)), np.zeros(PIXELS))


def _constant_critic(name: str, value: float):
  return _linear(name, np.zeros((PIXELS, 1)), np.full(1, value))


def _nets(g_ab=None, g_ba=None, d_a=0.25, d_b=-0.5):
  return {"g_ab": g_ab or _transposer("g_ab"), "g_ba": g_ba or _transposer("g_ba"),
          "d_a": _constant_critic("d_a", d_a), "d_b": _constant_critic("d_b", d_b)}


def _batch(b=6):
  x_a = tf.reshape(tf.sin(tf.range(b * PIXELS, dtype=tf.float32)), [b, PIXELS])
  x_b = tf.reshape(tf.cos(tf.range(b * PIXELS, dtype=tf.float32)), [b, PIXELS])
  label_a, label_b = tf.range(b), tf.range(b)[::-1] + 2
  return {"x_a": x_a, "x_b": x_b, "y_a": tf.one_hot(label_a, 10), "y_b": tf.one_hot(label_b, 10)}


def test_transpose_swaps_rows_and_columns_and_is_its_own_inverse():
  image = np.arange(64, dtype=np.float32).reshape(8, 8)
  flat = tf.constant(image.reshape(1, 64))
  np.testing.assert_array_equal(cyclegan.transpose(flat).numpy().reshape(8, 8), image.T)
  np.testing.assert_array_equal(cyclegan.transpose(cyclegan.transpose(flat)), flat)


def test_the_data_is_unpaired_and_a_function_of_the_index_alone():
  indices = tf.range(300, dtype=tf.int64)
  batch = cyclegan.unpaired_examples(indices)
  own = datasets.tfds_examples(indices)
  partner = datasets.tfds_examples(indices + cyclegan.PARTNER_OFFSET)
  np.testing.assert_array_equal(batch["x_a"], own["x"])
  np.testing.assert_array_equal(batch["label_a"], own["label"])
  np.testing.assert_array_equal(batch["y_a"], own["y"])
  np.testing.assert_array_equal(batch["y_b"], partner["y"])
  np.testing.assert_array_equal(batch["x_b"], cyclegan.transpose(partner["x"]))  # B: the transpose of another one
  np.testing.assert_array_equal(batch["label_b"], partner["label"])
  assert batch["x_a"].shape == (300, 64) and -1 <= np.min(batch["x_a"]) < np.max(batch["x_a"]) <= 1
  paired = np.all(np.asarray(batch["x_b"]) == np.asarray(cyclegan.transpose(batch["x_a"])), axis=1)
  assert paired.mean() < 0.02  # (the same example by chance: 1 in 1497)
  assert np.mean(np.asarray(batch["label_a"]) == np.asarray(batch["label_b"])) < 0.25  # not even the same digit
  some = tf.constant([299, 7, 123], tf.int64)  # another batch, another order: the same examples
  again = cyclegan.unpaired_examples(some)
  for key in ("x_a", "x_b", "label_b"):
    np.testing.assert_array_equal(again[key], tf.gather(batch[key], some))


def test_perfect_inverse_generators_have_no_cycle_error_and_constant_critics_give_the_known_adversarial_term():
  nets, batch = _nets(), _batch()  # the transpose both ways: g_ba(g_ab(x)) == x exactly
  figures = cyclegan.cycle_generator_loss(nets, batch, GENERATORS)
  np.testing.assert_array_equal(figures["cycle"], np.zeros(6))
  np.testing.assert_allclose(figures["adversarial"], np.full(6, (-0.5 - 1) ** 2 + (0.25 - 1) ** 2), rtol=1e-6)
  np.testing.assert_allclose(figures["loss"], figures["adversarial"], rtol=1e-6)
  assert "identity" not in figures  # off by default


def test_the_cycle_and_identity_terms_of_zero_generators_are_the_mean_absolute_pixels():
  nets, batch = _nets(g_ab=_zeros("g_ab"), g_ba=_zeros("g_ba")), _batch()
  figures = cyclegan.cycle_generator_loss(nets, batch, GENERATORS, cycle_weight=3.0, identity_weight=2.0)
  absolute = np.mean(np.abs(batch["x_a"]), axis=1) + np.mean(np.abs(batch["x_b"]), axis=1)
  np.testing.assert_allclose(figures["cycle"], absolute, rtol=1e-6)
  np.testing.assert_allclose(figures["identity"], absolute, rtol=1e-6)
  np.testing.assert_allclose(figures["loss"], figures["adversarial"] + 5.0 * absolute, rtol=1e-6)


def test_the_critic_loss_of_constant_critics_is_the_halved_least_squares_of_both():
  figures = cyclegan.cycle_critic_loss(_nets(d_a=0.25, d_b=-0.5), _batch(), CRITICS)
  loss_a, loss_b = 0.5 * ((0.25 - 1) ** 2 + 0.25**2), 0.5 * ((-0.5 - 1) ** 2 + 0.5**2)
  np.testing.assert_allclose(figures["loss_a"], np.full(6, loss_a), rtol=1e-6)
  np.testing.assert_allclose(figures["loss_b"], np.full(6, loss_b), rtol=1e-6)
  np.testing.assert_allclose(figures["loss"], np.full(6, loss_a + loss_b), rtol=1e-6)
  assert all(v.shape == (6,) for v in figures.values())


def test_conditional_critics_see_each_image_with_its_label_and_a_translation_with_its_sources():
  reader = np.concatenate([np.zeros((PIXELS, 1)), np.arange(10)[:, None] / 10])  # scores label / 10, ignores pixels
  nets = {**_nets(), "d_a": _linear("d_a", reader, np.zeros(1)), "d_b": _linear("d_b", reader, np.zeros(1))}
  batch = _batch()
  a, b = np.arange(6) / 10, (np.arange(6)[::-1] + 2) / 10  # each image's label / 10
  critics = cyclegan.cycle_critic_loss(nets, batch, CRITICS, conditional=True)
  np.testing.assert_allclose(critics["loss_a"], 0.5 * ((a - 1) ** 2 + b**2), rtol=1e-6)  # g_ba(x_b) carries b's
  np.testing.assert_allclose(critics["loss_b"], 0.5 * ((b - 1) ** 2 + a**2), rtol=1e-6)  # g_ab(x_a) carries a's
  generators = cyclegan.cycle_generator_loss(nets, batch, GENERATORS, conditional=True)
  np.testing.assert_allclose(generators["adversarial"], (a - 1) ** 2 + (b - 1) ** 2, rtol=1e-6)


@pytest.mark.parametrize("loss, trained, terms", [
    (cyclegan.cycle_generator_loss, GENERATORS, ("loss", "adversarial", "cycle")),
    (cyclegan.cycle_critic_loss, CRITICS, ("loss",)),
])
def test_one_loss_and_each_of_its_terms_reach_every_model_its_phase_trains(loss, trained, terms):
  nets = {name: models.mlp(PIXELS, 1 if name in CRITICS else PIXELS, (8,), name=name)
          for name in (*GENERATORS, *CRITICS)}
  with tf.GradientTape(persistent=True) as tape:
    figures = loss(nets, _batch(), trained)
    means = {term: tf.reduce_mean(figures[term]) for term in terms}
  for term, name in [(term, name) for term in terms for name in trained]:
    grads = tape.gradient(means[term], nets[name].trainable_variables)
    assert all(g is not None for g in grads) and any(np.any(g.numpy() != 0) for g in grads), (term, name)
  del tape


def test_a_phase_that_trains_a_model_the_loss_only_calls_is_one_line():
  with pytest.raises(UserError) as error:
    cyclegan.cycle_generator_loss(_nets(), _batch(), ("g_ab", "d_a"))
  assert str(error.value).splitlines()[0] == (  # the line trainer.main prints
      "cycle_generator_loss trains only 'g_ab' and 'g_ba', but its phase's trains names 'd_a'; set that phase's "
      "trains to ('g_ab', 'g_ba')")
  cyclegan.cycle_critic_loss(_nets(), _batch(), "d_b")  # one of its models alone is fine


def test_a_perfect_translator_keeps_every_label_and_cycles_exactly():
  figures = cyclegan.cyclegan_digits_quality(_nets())
  assert figures["real_accuracy"] >= 0.95
  assert figures["accuracy"] == figures["accuracy_ba"] == figures["real_accuracy"]
  assert figures["cycle_error"] == figures["cycle_error_ba"] == 0.0
  assert figures["samples"].dtype == np.uint8 and figures["samples"].shape == (3 * 33 + 1, 10 * 33 + 1, 1)


def test_a_translator_that_draws_nothing_keeps_no_label():
  figures = cyclegan.cyclegan_digits_quality(_nets(g_ab=_zeros("g_ab"), g_ba=_zeros("g_ba")))
  assert figures["accuracy"] <= 0.2 and figures["accuracy_ba"] <= 0.2  # one class for every digit: about 0.1
  assert figures["cycle_error"] > 0.5 and figures["real_accuracy"] >= 0.95


@pytest.mark.slow
def test_the_config_trains_both_joint_phases_and_reports_the_translation(tmp_path):
  config.parse([os.path.join(REPO, "configs", "cyclegan_digits.gin")],
               ["TRAIN_STEPS = 4", "train.eval_every = 2", "train.log_every = 2", "train.export_models = False"])
  run = train.train(str(tmp_path), tf.distribute.MirroredStrategy(["/cpu:0"]))
  final = {}  # the last update's records: its log line's figures and its evaluation's
  for record in map(json.loads, open(tmp_path / "metrics.jsonl")):
    final.update(record if record["update"] == 4 else {})
  assert final and run.last_eval.items() <= final.items()
  assert {"eval/accuracy", "eval/accuracy_ba", "eval/cycle_error", "eval/real_accuracy", "g/loss", "g/cycle",
          "g/adversarial", "d/loss", "d/loss_a", "d/loss_b"} <= set(final), final
  for phase, trained in (("g", GENERATORS), ("d", CRITICS)):  # one loss, a gradient for each of its models
    assert all(final[f"{phase}/grad_norm/{name}"] > 0 for name in trained), final
  assert sorted(os.listdir(tmp_path / "samples")) == ["eval_samples_000002.png", "eval_samples_000004.png"]
