"""CycleGAN (Zhu et al. 2017) between two unpaired digit domains: the data, the two joint losses, the evaluation.

Domain A is the `digits` dataset's 8x8 images; domain B is the same kind of images TRANSPOSED (rows and columns
swapped). Transposition is a good test of translation because it moves every pixel off the diagonal (no pixelwise
map, such as inverting the colours, can do it) yet is known exactly, so a translation can be mapped back by the
inverse and read by the fixed digits classifier: whether the digit's label survives is a number, as the GAN's
accuracy is.

Unpaired: the B image at global example index i is NOT the transpose of the A image at i, but of the example that
the same input would read at index i + PARTNER_OFFSET, which lies in another epoch of its shuffle (a different,
independently seeded permutation), so x_a and x_b come from different examples (the same one with chance 1/N).

Four models and two joint phases (trainer.phase): the generators g_ab (A -> B) and g_ba (B -> A) train together
on one loss (`cycle_generator_loss`), the critics d_a and d_b together on another (`cycle_critic_loss`). The losses
are the paper's least-squares GAN ones with an L1 cycle-consistency term. Nothing here draws random numbers, so
every figure is a function of the batch (and hence of the example indices) alone.

The losses alone cannot tell the transpose from a map that also swaps digits (the other generator swaps them back),
and MLP generators have no preference either: a Dense layer's functions and initialisation are the same under any
fixed reordering of its input or output pixels, so to an MLP the transpose is no nearer than any other arrangement.
Trained so, they swap digits (configs/cyclegan_digits.gin has the figures). `conditional=True` shows the critics
each image's digit, which is what keeps it; the generators still never see a label.
"""

from typing import Mapping, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from trainer import datasets
from trainer.data import ExamplesFn
from trainer.errors import UserError
from trainer.tasks import classify, images
from trainer.tasks.models import check_input, check_shape

# Domain B's example at index i is the input's example at i + PARTNER_OFFSET: 2^40 examples further, far beyond any
# run's indices, so in another epoch of tfds_examples' shuffle (and a different one for every epoch of domain A).
PARTNER_OFFSET = 2**40


def transpose(x: tf.Tensor) -> tf.Tensor:
  """Flat square images [b, s*s] with their rows and columns swapped: the map from domain A to B, its own inverse."""
  side = int(round(x.shape[-1] ** 0.5))
  if side * side != x.shape[-1]:
    raise UserError(f"the CycleGAN's domain map transposes square images, but the examples have {x.shape[-1]} "
                    "pixels, not a square number")
  return tf.reshape(tf.transpose(tf.reshape(x, [-1, side, side]), [0, 2, 1]), [-1, side * side])


@gin.configurable
def unpaired_examples(indices: tf.Tensor, examples: ExamplesFn = datasets.tfds_examples,
                      partner_offset: int = PARTNER_OFFSET) -> dict:
  """{'x_a', 'label_a', 'y_a': the example at each index (its image, label and one-hot label); 'x_b', 'label_b',
  'y_b': the transpose of ANOTHER example, the one at index + partner_offset (see the module docstring)}.
  A trainer.data.ExamplesFn over one that gives {'x', 'label', 'y'} (tfds_examples with images_and_labels)."""
  a, b = examples(indices), examples(indices + partner_offset)
  return {"x_a": a["x"], "label_a": a["label"], "y_a": a["y"],
          "x_b": transpose(b["x"]), "label_b": b["label"], "y_b": b["y"]}


def _names(trains) -> tuple[str, ...]:
  return (trains,) if isinstance(trains, str) else tuple(trains)


def _check_trains(loss: str, trains, own: Sequence[str]) -> None:
  """The phase may train only models whose gradient this loss means (a critic trained on the generators' loss
  would learn to help them)."""
  stray = [name for name in _names(trains) if name not in own]
  if stray:
    raise UserError(f"{loss} trains only {' and '.join(map(repr, own))}, but its phase's trains names "
                    f"{', '.join(map(repr, stray))}; set that phase's trains to {tuple(own)!r}")


def _run(models: Mapping[str, keras.Model], name: str, x: tf.Tensor, training: bool) -> tf.Tensor:
  """Model `name` on x, in float32 whatever its dtype policy (losses are computed in float32: trainer.precision)."""
  return tf.cast(models[name](check_input(models[name], name, x), training=training), tf.float32)


def _translate(models: Mapping[str, keras.Model], generator: str, x: tf.Tensor, training: bool) -> tf.Tensor:
  """generator(x), checked to be an image of x's shape (shapes are static while tracing)."""
  fake = _run(models, generator, x, training)
  check_shape(fake.shape[1:], x.shape[1:], f"generator '{generator}' makes images of shape {{ours}}, but the data's "
                                           f"have shape {{theirs}}; set {generator}/mlp.output_dim = {{size}}")
  return fake


def _score(models: Mapping[str, keras.Model], critic: str, x: tf.Tensor, label: tf.Tensor | None,
           training: bool) -> tf.Tensor:
  """The critic's score per example [b], of x [with its one-hot label appended]; least squares pulls it to 1 on
  real images and to 0 on translations."""
  x = x if label is None else tf.concat([x, tf.cast(label, x.dtype)], axis=1)
  return _run(models, critic, x, training)[:, 0]


def _labels(batch: dict, conditional: bool) -> tuple[tf.Tensor | None, tf.Tensor | None]:
  """The one-hot labels the critics see with domain A's and B's images (a translation carries its source's)."""
  return (batch["y_a"], batch["y_b"]) if conditional else (None, None)


def _l1(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """Mean absolute pixel difference per example [b] (the paper's L1 norm, averaged over pixels as its code does,
  which is the scale its lambda = 10 was chosen for)."""
  return tf.reduce_mean(tf.abs(x - y), axis=1)


@gin.configurable
def cycle_generator_loss(models: Mapping[str, keras.Model], batch: dict, trains: str | tuple[str, ...],
                         g_ab: str = "g_ab", g_ba: str = "g_ba", d_a: str = "d_a", d_b: str = "d_b",
                         cycle_weight: float = 10.0, identity_weight: float = 0.0, conditional: bool = False) -> dict:
  """Both generators' joint loss, per example: adversarial + cycle_weight * cycle [+ identity_weight * identity].

  adversarial: (d_b(g_ab(x_a)) - 1)^2 + (d_a(g_ba(x_b)) - 1)^2, the least-squares GAN generator loss in both
  directions; cycle: |g_ba(g_ab(x_a)) - x_a| + |g_ab(g_ba(x_b)) - x_b|, what ties a translation to its source
  (without it any B-looking image would do); identity: |g_ab(x_b) - x_b| + |g_ba(x_a) - x_a|, the paper's optional
  colour-preserving term, off by default and computed only when weighted (an identity prior suits domains that
  share a layout, not transposed ones). The critics are only called (training=False). `conditional` as for
  `cycle_critic_loss`.
  """
  _check_trains("cycle_generator_loss", trains, (g_ab, g_ba))
  x_a, x_b = batch["x_a"], batch["x_b"]
  y_a, y_b = _labels(batch, conditional)
  fake_b, fake_a = _translate(models, g_ab, x_a, True), _translate(models, g_ba, x_b, True)
  adversarial = (tf.square(_score(models, d_b, fake_b, y_a, False) - 1.0)
                 + tf.square(_score(models, d_a, fake_a, y_b, False) - 1.0))
  cycle = _l1(_translate(models, g_ba, fake_b, True), x_a) + _l1(_translate(models, g_ab, fake_a, True), x_b)
  figures = {"adversarial": adversarial, "cycle": cycle}
  loss = adversarial + cycle_weight * cycle
  if identity_weight:
    figures["identity"] = _l1(_translate(models, g_ab, x_b, True), x_b) + _l1(_translate(models, g_ba, x_a, True), x_a)
    loss += identity_weight * figures["identity"]
  return {"loss": loss, **figures}


@gin.configurable
def cycle_critic_loss(models: Mapping[str, keras.Model], batch: dict, trains: str | tuple[str, ...],
                      g_ab: str = "g_ab", g_ba: str = "g_ba", d_a: str = "d_a", d_b: str = "d_b",
                      conditional: bool = False) -> dict:
  """Both critics' joint loss, per example: the least-squares GAN critic loss of each, halved as in the paper,
  0.5 * ((d(real) - 1)^2 + d(translation)^2), d_a on x_a against g_ba(x_b), d_b on x_b against g_ab(x_a).

  The generators are only called (training=False). The paper's buffer of 50 past translations is left out: it is
  state outside the batch, which would make a window's gradient depend on what ran before it on that replica.
  Figures: loss, loss_a and loss_b (each critic's part), real_score and fake_score (both critics' mean scores).

  conditional: the critics also see the image's one-hot digit label (batch 'y_a', 'y_b'), a translation its
  source's, so a translation must keep its digit to pass as real (see the module docstring for why it is needed).
  """
  _check_trains("cycle_critic_loss", trains, (d_a, d_b))
  x_a, x_b = batch["x_a"], batch["x_b"]
  y_a, y_b = _labels(batch, conditional)
  real_a, real_b = _score(models, d_a, x_a, y_a, True), _score(models, d_b, x_b, y_b, True)
  fake_a = _score(models, d_a, _translate(models, g_ba, x_b, False), y_b, True)
  fake_b = _score(models, d_b, _translate(models, g_ab, x_a, False), y_a, True)
  loss_a = 0.5 * (tf.square(real_a - 1.0) + tf.square(fake_a))
  loss_b = 0.5 * (tf.square(real_b - 1.0) + tf.square(fake_b))
  return {"loss": loss_a + loss_b, "loss_a": loss_a, "loss_b": loss_b, "real_score": 0.5 * (real_a + real_b),
          "fake_score": 0.5 * (fake_a + fake_b)}


def _labelled(scorer: keras.Model, x, labels: np.ndarray) -> float:
  """The share of images `x` the scorer classifies as `labels`."""
  return float(np.mean(np.argmax(scorer(x, training=False), axis=1) == labels))


@gin.configurable
def cyclegan_digits_quality(models: Mapping[str, keras.Model], g_ab: str = "g_ab", g_ba: str = "g_ba",
                            scorer_path: str = classify.SCORER, data_dir: str | None = None) -> dict:
  """Scores the translators on all 300 digits of the test split with the fixed classifier (trainer.tasks.classify).

  accuracy: the share of digits whose translation g_ab(x_a), transposed back to domain A (the domain map's exact
  inverse), is still classified as its label (the translation kept the digit); accuracy_ba: the same for g_ba on
  the transposed test digits; real_accuracy: the classifier on the real test digits, the ceiling of both;
  cycle_error and cycle_error_ba: the mean absolute pixel error (pixels in [-1, 1]) of g_ba(g_ab(x_a)) against x_a
  and of g_ab(g_ba(x_b)) against x_b; samples: rows x_a, g_ab(x_a), g_ba(g_ab(x_a)) for the first test digit of
  each class.
  """
  arrays = datasets.load("digits", "test", data_dir)
  real = datasets.images_and_labels(arrays, tf.range(len(arrays["label"]), dtype=tf.int64))  # as in training
  x_a, labels = real["x"], real["label"].numpy()
  x_b = transpose(x_a)
  fake_b, fake_a = _translate(models, g_ab, x_a, False), _translate(models, g_ba, x_b, False)
  back_a, back_b = _translate(models, g_ba, fake_b, False), _translate(models, g_ab, fake_a, False)
  scorer = classify.load_scorer(scorer_path)
  shown = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]
  rows = np.concatenate([np.asarray(tf.gather(x, shown)) for x in (x_a, fake_b, back_a)])
  return {"accuracy": _labelled(scorer, transpose(fake_b), labels), "accuracy_ba": _labelled(scorer, fake_a, labels),
          "real_accuracy": _labelled(scorer, x_a, labels),
          "cycle_error": float(tf.reduce_mean(tf.abs(back_a - x_a))),
          "cycle_error_ba": float(tf.reduce_mean(tf.abs(back_b - x_b))),
          "samples": images.grid(rows.reshape(-1, 8, 8, 1), 3)}
