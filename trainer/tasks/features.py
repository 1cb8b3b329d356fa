"""Fixed feature networks for the Fréchet distance (trainer.frechet): what "close to the data" is measured in.

- `classifier_features`: the penultimate layer of the shipped digits classifier (the judge of
  trainer.tasks.classify), i.e. a Fréchet *classifier* distance (FCD) for 8 x 8 digits.
- `pool_features`: a keras.applications network's global-average-pooled features, InceptionV3's 2,048 being FID's.
  Its weights come from a local file only: nothing downloads at run time.

Both are deterministic (inference mode, no dropout) and built once per run.
"""

import gin
import keras
import tensorflow as tf

from trainer.errors import UserError
from trainer.tasks.classify import SCORER, load_scorer


@gin.configurable
def classifier_features(path: str = SCORER) -> keras.Model:
  """The digits classifier at `path` (trainer.tasks.classify.save_scorer's format) up to its last hidden layer:
  64 pixels in [-1, 1] -> 256 ReLU features."""
  scorer = load_scorer(path)
  return keras.Model(scorer.input, scorer.layers[-2].output, name="classifier_features")


@gin.configurable
def pool_features(weights: str = gin.REQUIRED, image_shape: tuple[int, int, int] = gin.REQUIRED,
                  application: str = "InceptionV3", size: int = 299) -> keras.Model:
  """keras.applications.<application> without its top, average-pooled, on images of `image_shape` in [-1, 1].

  Images are resized to `size` x `size` bilinearly without antialiasing (keras.layers.Resizing, which is
  tf.image.resize's default, as the TF FID code resizes; clean-fid's PIL bicubic gives other figures), and grey
  images repeated to 3 channels. [-1, 1] is what Keras's InceptionV3 preprocessing produces: no further scaling.
  `weights` is a local file of the network's weights (Keras's `..._notop.h5`, or any `model.save_weights` of the
  same network).
  """
  if not tf.io.gfile.exists(weights):
    raise UserError(f"pool_features.weights = {weights!r} does not exist; give the path of a local weights file "
                    "(docs/evaluation.md says where; nothing is downloaded at run time)")
  build = getattr(keras.applications, application, None)
  if build is None:
    raise UserError(f"pool_features.application = {application!r} is not in keras.applications")
  backbone = build(include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3))
  backbone.load_weights(weights)
  inputs = keras.Input(image_shape, name="images")
  x = inputs
  if tuple(image_shape[:2]) != (size, size):
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=False)(x)
  if image_shape[-1] == 1:
    x = keras.layers.Concatenate()([x, x, x])
  return keras.Model(inputs, backbone(x, training=False), name=f"{application}_pool_features")
