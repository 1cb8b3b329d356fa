"""pyproject.toml: trainer installed with pip into a fresh venv trains a user's project from the user's directory: their
gin file imports their module and includes a shipped config, and nothing is read from the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.processes import REPO

_USER_MODULE = '''"""A user's own critic, in the user's directory (on sys.path: `python -m` puts the working directory there)."""
import gin
import keras


@gin.configurable
def my_critic(input_dim: int = 2, width: int = 8) -> keras.Model:
  inputs = keras.Input((input_dim,))
  hidden = keras.layers.Dense(width, activation="relu", name="my_hidden")(inputs)
  return keras.Model(inputs, keras.layers.Dense(1, name="my_logit")(hidden), name="critic")
'''

_USER_CONFIG = """include 'configs/smoke.gin'
import my_models

train.models = {'generator': @generator/mlp, 'critic': @my_critic}
my_critic.width = 12
TRAIN_STEPS = 8
"""

# Where trainer and its shipped configs are, seen from the venv (run in the user's directory).
_WHERE = ("import os, trainer; from trainer import config; config.parse(['configs/gan_digits.gin'], []); "
          "print(os.path.dirname(trainer.__file__)); print(config.CONFIG_ROOT)")


def _python(venv, *args, cwd, timeout=300) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on the path
  return subprocess.run([os.path.join(venv, "bin", "python"), *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """A fresh venv with trainer installed from a copy of the checkout. Its dependencies are this venv's, through a
  .pth file (no TensorFlow download); the build uses the setuptools and wheel already there (no network)."""
  root = tmp_path_factory.mktemp("package")
  source, venv = root / "source", str(root / "venv")
  # A copy, so that the build's build/ and *.egg-info/ do not land in the checkout.
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "tmp", "build", "*.egg-info",
                                                               "__pycache__", ".pytest_cache"))
  subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=120)
  site = _python(venv, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip()
  with open(os.path.join(site, "trainer_test_dependencies.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  installed = _python(venv, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                      str(source), cwd=root)
  assert installed.returncode == 0, installed.stderr[-3000:]
  return venv


@pytest.mark.slow
def test_a_users_project_trains_with_the_installed_package(venv, tmp_path):
  (tmp_path / "my_models.py").write_text(_USER_MODULE)
  # Their own configs/ as well: an importable namespace package from their directory, which gin's package reader
  # stumbled on before trainer's configs were looked up.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "mine.gin").write_text(_USER_CONFIG)
  where = _python(venv, "-c", _WHERE, cwd=tmp_path)
  assert where.returncode == 0, where.stderr[-3000:]
  package, config_root = where.stdout.split()
  assert package.startswith(venv) and package == config_root  # the configs inside the installed package

  result = _python(venv, "-m", "trainer.main", "--gin_file=configs/mine.gin", "--model_dir=run",
                   cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "my_critic.width = 12" in (tmp_path / "run" / "operative_config.gin").read_text()
  with zipfile.ZipFile(tmp_path / "run" / "export" / "critic.keras") as exported:  # the user's model was trained
    layers = [layer["config"]["name"] for layer in json.loads(exported.read("config.json"))["config"]["layers"]]
  assert "my_hidden" in layers


@pytest.mark.slow
def test_the_example_runs_from_its_own_directory_with_the_installed_package(venv, tmp_path):
  examples = shutil.copytree(os.path.join(REPO, "examples"), tmp_path / "examples")
  result = _python(venv, "-m", "trainer.main", "--gin_file=my_models.gin", "--model_dir=run", cwd=examples)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "residual_mlp.width = 32" in (examples / "run" / "operative_config.gin").read_text()
