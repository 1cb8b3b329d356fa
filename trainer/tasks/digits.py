"""The `digits` TFDS dataset: scikit-learn's bundled handwritten digits (UCI; 1,797 8x8 images, 10 classes).

The images ship inside the scikit-learn wheel, so preparing the dataset downloads nothing: the first
`tfds.load('digits')` (or trainer.datasets) writes it to the TFDS data dir in seconds, and later runs read it from
there. Pixel values 0..16 are stored as uint8 0..255 (x 255/16, rounded). The split is fixed: a permutation seeded
with 0 puts 300 images (30 per class) in 'test' and the other 1,497 in 'train'.

It is prepared in both file formats: TFRecord (read into memory by `builder.as_dataset`) and an ArrayRecord copy
of the same records (read from disk by position, trainer.records), so either input path of
`tfds_examples.source` runs on it and they can be compared.

It lives inside the `trainer` package on purpose: TFDS builders in a top-level module cannot find their metadata.
"""

import numpy as np
import tensorflow_datasets as tfds

from trainer import records
from trainer.errors import UserError

TEST_PER_CLASS = 30
SCIKIT_LEARN = "scikit-learn==1.9.1"  # the version requirements.txt pins


def load_digits():
  """sklearn.datasets.load_digits(), or a one-line UserError saying how to install scikit-learn."""
  try:
    from sklearn.datasets import load_digits as load  # pylint: disable=import-outside-toplevel  (only to prepare)
  except ImportError as e:
    raise UserError(f"preparing the 'digits' dataset needs scikit-learn, which is not installed: pip install "
                    f"{SCIKIT_LEARN} (or pip install -r requirements.txt)") from e
  return load()


def _split_indices() -> dict[str, np.ndarray]:
  labels = load_digits().target
  order = np.random.default_rng(0).permutation(len(labels))
  test = np.concatenate([order[labels[order] == c][:TEST_PER_CLASS] for c in range(10)])
  return {"test": np.sort(test), "train": np.setdiff1d(np.arange(len(labels)), test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits as a TFDS dataset (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "1,497 train / 300 test images from sklearn.datasets.load_digits."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # (PNG is what TFDS writes for arrays anyway; declared, the disk reader decodes it in one op per image)
            "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def download_and_prepare(self, **kwargs) -> None:  # pylint: disable=arguments-differ
    """TFDS's preparation (TFRecord files), then the ArrayRecord copy beside it if it is not there yet."""
    super().download_and_prepare(**kwargs)
    if not records.has_array_record(self):
      records.add_array_record(self)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(indices) for split, indices in _split_indices().items()}

  def _generate_examples(self, indices):
    digits = load_digits()
    for i in indices:
      image = np.round(digits.images[i] * 255.0 / 16.0).astype(np.uint8)[:, :, None]
      yield int(i), {"image": image, "label": int(digits.target[i])}
