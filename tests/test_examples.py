"""examples/: a user's own model module, outside the package, imported by its gin file and trained by trainer.main."""

import json
import os

import pytest
import tensorflow as tf

from tests.processes import REPO, checkpoint_state, run
from trainer.errors import UserError
from trainer.tasks import classify


@pytest.mark.slow
def test_a_users_module_trains_through_a_gin_import_line(tmp_path):
  result = run("-m", "trainer.main", "--gin_file=examples/my_models.gin", f"--model_dir={tmp_path}",
               env={"PYTHONPATH": os.path.join(REPO, "examples")})
  assert result.returncode == 0, result.stderr[-3000:]
  state = checkpoint_state(tmp_path)
  assert any(name.startswith("optimizer_mine/") for name in state) and state["update/.ATTRIBUTES/VARIABLE_VALUE"] == 300
  evaluation = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "eval/mine/mse" in r][-1]
  assert evaluation["eval/mine/mse"] < 0.05  # learned: the noise floor is 0.01, the untrained model ~15


@pytest.mark.slow
def test_without_its_directory_on_the_path_the_import_is_one_line(tmp_path):
  result = run("-m", "trainer.main", "--gin_file=examples/my_models.gin", f"--model_dir={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: bad gin config: No module named 'my_models' (examples/my_models.gin:19: import my_models); fix the "
      "module name, or put its directory on PYTHONPATH")


@pytest.mark.slow
def test_a_users_conv_model_with_batchnorm_and_dropout_trains_on_2_replicas(tmp_path):
  result = run("-m", "trainer.main", "--gin_file=examples/my_conv.gin", f"--model_dir={tmp_path}", "--cpu_replicas=2",
               env={"PYTHONPATH": os.path.join(REPO, "examples")})
  assert result.returncode == 0, result.stderr[-3000:]
  state = checkpoint_state(tmp_path)
  assert sum("moving_mean" in name for name in state) == 2 and state["update/.ATTRIBUTES/VARIABLE_VALUE"] == 300
  evaluation = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "eval/test_accuracy" in r][-1]
  # measured 0.983 (with BatchNorm momentum 0.99 instead of 0.9: 0.64, the moving statistics lag behind)
  assert evaluation["eval/test_accuracy"] >= 0.95
  assert "draw the same mask" not in result.stderr  # its dropout is trainer's


def test_a_users_model_that_does_not_fit_the_data_is_one_line(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(REPO, "examples"))
  import my_models  # pylint: disable=import-outside-toplevel  (the user's module, from their directory)
  nets = {"mine": my_models.small_convnet(image_shape=(7, 7, 1))}
  batch = {"x": tf.zeros([2, 64]), "label": tf.zeros([2], tf.int32)}
  with pytest.raises(UserError, match=r"^model 'mine' takes inputs of shape \(49,\), but the data gives \(64,\)"):
    tf.function(lambda: classify.cross_entropy(nets, batch, "mine"))()  # as inside the step: one line
