"""Keeping the best checkpoint by an evaluation figure (trainer.best), and train.keep_best through a real run."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from trainer import best
from trainer.errors import UserError


def _keeper(tmp_path, mode="min", chief=True):
  saved, exported = [], []
  keeper = best.KeepBest("fcd", mode, str(tmp_path), lambda u: saved.append(u) or f"ckpt-{u}",
                         lambda d: exported.append(d), chief)
  return keeper, saved, exported


def test_only_an_improvement_is_saved_and_exported_and_recorded(tmp_path):
  keeper, saved, exported = _keeper(tmp_path)
  for update, value in ((10, 5.0), (20, 6.0), (30, 4.0), (40, float("nan")), (50, 4.0)):
    keeper(update, {"eval/fcd": value, "eval/accuracy": 0.5})
  assert saved == [10, 30] and exported == [os.path.join(tmp_path, "best")] * 2
  assert keeper.best() == {"figure": "eval/fcd", "value": 4.0, "update": 30, "checkpoint": "ckpt-30"}


def test_a_resumed_run_compares_with_the_best_of_the_whole_run(tmp_path):
  _keeper(tmp_path)[0](10, {"eval/fcd": 3.0})
  keeper, saved, _ = _keeper(tmp_path)  # the relaunched process
  keeper(20, {"eval/fcd": 3.5})
  keeper(30, {"eval/fcd": 2.5})
  assert saved == [30]


def test_max_keeps_the_highest(tmp_path):
  keeper, saved, _ = _keeper(tmp_path, mode="max")
  for update, value in ((10, 0.5), (20, 0.4), (30, 0.9)):
    keeper(update, {"eval/fcd": value})
  assert saved == [10, 30]


def test_a_non_chief_saves_its_copy_and_neither_exports_nor_records(tmp_path):
  keeper, saved, exported = _keeper(tmp_path, chief=False)
  keeper(10, {"eval/fcd": 1.0})
  assert saved == [10] and not exported and keeper.best() is None


def test_a_figure_no_evaluation_reports_everywhere_is_one_line(tmp_path):
  with pytest.raises(UserError, match=r"train.keep_best = 'eval/fcd', but no evaluation reports it on every "
                     r"worker \(they report: eval/accuracy\)"):
    _keeper(tmp_path)[0](10, {"eval/accuracy": 0.5})
  with pytest.raises(UserError, match="train.keep_best_mode = 'lowest' must be 'min'"):
    best.check("eval/fcd", "lowest")
  with pytest.raises(UserError, match="must name an evaluation figure"):
    best.check("eval/", "min")


def test_a_run_keeps_the_checkpoint_and_export_of_its_best_evaluation(tmp_path):
  scores = iter([3.0, 1.0, 2.0])
  run = toy.run(tmp_path, train_steps=6, evaluate=lambda models: {"score": next(scores)}, eval_every=2,
                keep_best="score", export_models=True)
  assert run.update == 6
  with open(os.path.join(tmp_path, "best", "best.json"), encoding="utf-8") as f:
    assert json.load(f)["update"] == 4
  reader = tf.train.load_checkpoint(os.path.join(tmp_path, "best", "checkpoints"))
  assert reader.get_tensor("update/.ATTRIBUTES/VARIABLE_VALUE") == 4
  assert os.path.exists(os.path.join(tmp_path, "best", "export", "a.keras"))
  kernel = [n for n in reader.get_variable_to_shape_map() if n.startswith("optimizer_a/_trainable_variables/0/")][0]
  last = tf.train.load_checkpoint(os.path.join(tmp_path, "checkpoints")).get_tensor(kernel)
  assert not np.array_equal(reader.get_tensor(kernel), last)  # the state at update 4, not the last one
