"""trainer.tasks.gan: the conditional non-saturating losses, and shape errors that stay one line inside a traced step."""

import re

import numpy as np
import pytest
import tensorflow as tf

from trainer.tasks import gan, models
from trainer.errors import UserError


def _models(latent=3, classes=2, pixels=4, generator_out=None, critic_in=None):
  return {"generator": models.mlp(latent + classes, generator_out or pixels, (), name="generator"),
          "critic": models.mlp(critic_in or pixels + classes, 1, (), name="critic")}


def _batch(latent=3, classes=2, pixels=4, b=5):
  labels = tf.constant([0, 1, 1, 0, 1][:b])
  return {"x": tf.reshape(tf.linspace(-1.0, 1.0, b * pixels), [b, pixels]),
          "z": tf.reshape(tf.range(b * latent, dtype=tf.float32) / 10.0, [b, latent]),
          "y": tf.one_hot(labels, classes)}


def test_the_conditional_critic_loss_is_softplus_of_the_logits_with_the_label_appended():
  nets, batch = _models(), _batch()
  figures = gan.ns_critic_loss(nets, batch, "critic", condition="y")
  fake = nets["generator"](tf.concat([batch["z"], batch["y"]], axis=1))
  real_logit = nets["critic"](tf.concat([batch["x"], batch["y"]], axis=1))[:, 0]
  fake_logit = nets["critic"](tf.concat([fake, batch["y"]], axis=1))[:, 0]
  np.testing.assert_allclose(figures["loss"], tf.nn.softplus(-real_logit) + tf.nn.softplus(fake_logit), rtol=1e-6)
  generator = gan.ns_generator_loss(nets, batch, "generator", condition="y")
  np.testing.assert_allclose(generator["loss"], tf.nn.softplus(-fake_logit), rtol=1e-6)


def test_the_label_changes_what_the_generator_is_scored_on():
  nets, batch = _models(), _batch()
  flipped = {**batch, "y": 1.0 - batch["y"]}
  assert not np.allclose(gan.ns_generator_loss(nets, batch, "generator", condition="y")["loss"],
                         gan.ns_generator_loss(nets, flipped, "generator", condition="y")["loss"])


@pytest.mark.parametrize("nets, message", [
    (dict(generator_out=6), r"generator 'generator' makes samples of shape \(6,\), but the data's examples have "
                            r"shape \(4,\); set generator/mlp.output_dim = 4"),
    (dict(critic_in=4), r"model 'critic' takes inputs of shape \(4,\), but the data gives \(6,\); .*"
                        r"critic/mlp.input_dim = 6\)"),
])
def test_shapes_the_models_cannot_take_name_both_shapes_even_inside_a_traced_step(nets, message):
  nets, batch = _models(**nets), _batch()
  step = tf.function(lambda: gan.ns_critic_loss(nets, batch, "critic", condition="y"))
  with pytest.raises(UserError) as error:
    step()
  assert re.fullmatch(message, str(error.value).splitlines()[0])  # the line trainer.main prints


def test_an_unconditional_generator_fed_a_label_names_its_input_shape():
  nets = {"generator": models.mlp(3, 4, (), name="generator"), "critic": models.mlp(4, 1, (), name="critic")}
  with pytest.raises(UserError, match=r"model 'generator' takes inputs of shape \(3,\), but the data gives \(5,\)"):
    tf.function(lambda: gan.ns_generator_loss(nets, _batch(), "generator", condition="y"))()


def test_evaluation_samples_are_a_function_of_their_index_and_cycle_through_the_classes():
  generator = models.mlp(42, 64, (16,), name="generator")
  whole = gan.samples({"generator": generator}, tf.range(20, dtype=tf.int64), classes=10)
  part = gan.samples({"generator": generator}, tf.range(5, 15, dtype=tf.int64), classes=10)
  np.testing.assert_allclose(whole[5:15], part, rtol=1e-6, atol=1e-7)
  seen = []
  identity = lambda z, training: seen.append(z) or z
  gan.samples({"generator": type("G", (), {"input_shape": (None, 42), "__call__": staticmethod(identity)})()},
              tf.range(12, dtype=tf.int64), classes=10)
  np.testing.assert_array_equal(np.argmax(seen[0][:, 32:], axis=1), np.arange(12) % 10)
