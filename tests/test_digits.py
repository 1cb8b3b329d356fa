"""trainer.tasks.digits: the local `digits` TFDS builder prepares offline and loads with tfds."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.processes import REPO
from trainer.tasks import digits  # registers the builder
from trainer.errors import UserError


def test_prepares_into_a_data_dir_and_loads_both_splits(tmp_path):
  builder = tfds.builder("digits", data_dir=str(tmp_path))
  builder.download_and_prepare()
  train = tfds.as_numpy(tfds.load("digits", split="train", data_dir=str(tmp_path), batch_size=-1))
  test = tfds.as_numpy(tfds.load("digits", split="test", data_dir=str(tmp_path), batch_size=-1))
  assert train["image"].shape == (1497, 8, 8, 1) and test["image"].shape == (300, 8, 8, 1)
  assert train["image"].dtype == np.uint8 and train["image"].max() == 255
  assert np.bincount(test["label"], minlength=10).tolist() == [30] * 10
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  assert sorted(np.concatenate([train["label"], test["label"]])) == sorted(load_digits().target)


@pytest.mark.slow
def test_a_digits_run_needs_no_network(tmp_path):
  if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"]).returncode:
    pytest.skip("unshare -rn (a user namespace without network) is not available here")
  program = ("from trainer import datasets; a = datasets.load('digits', 'train', " + repr(str(tmp_path)) + "); "
             "print(len(a['label']))")
  result = subprocess.run(["unshare", "-rn", sys.executable, "-c", program], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "1497", result.stderr[-2000:]


def test_without_scikit_learn_preparing_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `from sklearn.datasets import ...` fail
  with pytest.raises(UserError, match=r"needs scikit-learn, which is not installed: pip install scikit-learn=="):
    digits.load_digits()


def test_the_install_hint_names_the_pinned_version():
  with open(f"{REPO}/requirements.txt", encoding="utf-8") as f:
    assert digits.SCIKIT_LEARN in f.read().split()
