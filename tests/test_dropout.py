"""trainer.dropout: Keras's masks repeat across replicas, trainer's are keyed by example index, so 1 ≡ 2 replicas."""

import functools
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from trainer import dropout, state


def _masks(layer, strategy=None, indices_of=lambda r: r * 4 + np.arange(4), calls=1):
  """Each of 2 replicas' output of `layer` on ones [4, 64] (the mask, scaled), in trainer's keyed context."""
  strategy = strategy or toy.strategy(2)

  @tf.function
  def step():
    def replica():
      r = tf.distribute.get_replica_context().replica_id_in_sync_group
      indices = tf.numpy_function(lambda r: indices_of(int(r)).astype(np.int64), [r], tf.int64)
      with dropout.keyed({"index": tf.reshape(indices, [4])}):
        return [layer(tf.ones([4, 64]), training=True) for _ in range(calls)]
    return strategy.run(replica)

  return [[np.array(m) for m in strategy.experimental_local_results(out)] for out in step()]


def test_keras_dropout_draws_the_same_mask_on_every_replica_and_trainers_does_not():
  strategy = toy.strategy(2)
  with strategy.scope():  # as trainer builds models
    keras_layer = keras.layers.Dropout(0.5, seed=1)
  keras_masks = _masks(keras_layer, strategy)[0]
  np.testing.assert_array_equal(keras_masks[0], keras_masks[1])  # the claim, measured: correlated replicas
  ours = _masks(dropout.Dropout(0.5, name="d"))[0]
  assert np.mean(ours[0] != ours[1]) > 0.4  # independent masks of rate 0.5 differ in half the units
  for mask in ours:  # kept units are scaled by 1 / (1 - rate), the others are 0
    assert set(np.unique(mask)) == {0.0, 2.0} and abs(np.mean(mask == 0) - 0.5) < 0.05


def test_a_mask_is_a_function_of_the_example_index_the_layer_and_the_call():
  layer = dropout.Dropout(0.5, name="d")
  same = _masks(layer, indices_of=lambda r: np.arange(4))[0]  # both replicas given examples 0-3
  np.testing.assert_array_equal(same[0], same[1])
  first, second = _masks(layer, calls=2)  # the layer called twice in one forward pass (real, then fake)
  assert np.mean(first[0] != second[0]) > 0.4
  other_layer = _masks(dropout.Dropout(0.5, name="e"))[0]
  assert np.mean(other_layer[0] != first[0]) > 0.4
  next_epoch = _masks(layer, indices_of=lambda r: 1000 + r * 4 + np.arange(4))[0]  # the same examples, later
  assert np.mean(next_epoch[0] != first[0]) > 0.4


def _dropout_mlp(name, layer=dropout.Dropout):
  inputs = keras.Input((4,))
  x = keras.layers.Dense(16, activation="relu")(inputs)
  x = layer(0.5, name=f"{name}_dropout")(x)
  return keras.Model(inputs, keras.layers.Dense(1)(x), name=name)


def test_with_dropout_two_replicas_end_on_the_weights_of_one(tmp_path):
  # Checked to fail (max diff 0.23) with the replica id folded into the mask's key.
  kwargs = dict(cycle=[("a", 1, 2)], global_batch_size=16, train_steps=4,
                models={n: functools.partial(_dropout_mlp, n) for n in "ab"})
  one = toy.run(tmp_path / "r1", replicas=1, **kwargs)
  two = toy.run(tmp_path / "r2", replicas=2, **kwargs)
  assert toy.max_diff(toy.weights(one), toy.weights(two)) <= 1e-6


@pytest.mark.slow
def test_a_resumed_dropout_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
  kwargs = dict(cycle=[("a", 1)], models={n: functools.partial(_dropout_mlp, n) for n in "ab"})
  whole = toy.run(tmp_path / "whole", train_steps=4, **kwargs)
  toy.run(tmp_path / "parts", train_steps=2, **kwargs)
  resumed = toy.run(tmp_path / "parts", train_steps=4, **kwargs)
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0.0


def test_keras_random_layers_are_named_in_one_warning_line_at_several_replicas(caplog):
  model = _dropout_mlp("m", keras.layers.Dropout)
  with caplog.at_level(logging.WARNING):
    assert dropout.warn_correlated("m", model, 1) == ["m_dropout"] and not caplog.records
    dropout.warn_correlated("m", model, 2)
  assert [r.getMessage() for r in caplog.records] == [
      "model 'm' has Keras random layers (m_dropout) that draw the same mask on all 2 replicas; use "
      "trainer.dropout.Dropout, keyed by example index"]
  assert dropout.correlated_layers(_dropout_mlp("t")) == []


def test_building_a_model_with_keras_dropout_on_2_replicas_warns(caplog):
  with caplog.at_level(logging.WARNING):
    state.build(toy.strategy(2), {"m": functools.partial(_dropout_mlp, "m", keras.layers.Dropout)}, {}, 0)
  assert [r.getMessage() for r in caplog.records if "same mask" in r.getMessage()] == [
      "model 'm' has Keras random layers (m_dropout) that draw the same mask on all 2 replicas; use "
      "trainer.dropout.Dropout, keyed by example index"]
