"""trainer.divergence: train.on_nonfinite = 'skip' drops a non-finite window on every replica and goes on, within
SkipGuard's limits; 'stop' (the default) is tests/test_train.py's."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests import toy
from trainer.divergence import RECENT, SkipGuard
from trainer.errors import TrainingFailed, UserError
from trainer.tasks import regression


def _nan_in(start, stop):
  def examples(indices):
    batch = regression.regression_examples(indices)
    bad = (indices[:, None] >= start) & (indices[:, None] < stop)
    return {"x": batch["x"], "y": tf.where(bad, np.nan, batch["y"])}
  return examples


# window 3 of model a (examples 48-63 at 16 per update) is NaN
KWARGS = dict(cycle=[("a", 1)], train_steps=8, log_every=8, on_nonfinite="skip", examples=_nan_in(48, 64),
              optimizer="sgd")


def test_a_skipped_window_moves_nothing_on_any_replica_and_training_goes_on(tmp_path):
  one = toy.run(tmp_path / "r1", **KWARGS)
  two = toy.run(tmp_path / "r2", replicas=2, **KWARGS)
  assert toy.max_diff(toy.weights(one), toy.weights(two)) <= 1e-6
  assert int(one.optimizers["a"].iterations.numpy()) == 7 and one.update == 8
  assert one.last_log["a/nonfinite_skipped"] == 1 / 8 and np.isfinite(one.last_log["a/loss"])
  # the skipped window changed nothing: after it, the weights are those before it, bit for bit
  at_4 = toy.run(tmp_path / "at4", **{**KWARGS, "train_steps": 4})
  before = toy.run(tmp_path / "at3", **{**KWARGS, "train_steps": 3})
  assert toy.max_diff(toy.weights(at_4), toy.weights(before)) == 0
  for v in two.models["a"].trainable_variables:  # and both replicas hold the same weights
    np.testing.assert_array_equal(*[np.array(x) for x in v.value.values])


def test_a_run_resumed_after_a_skip_ends_bit_for_bit_on_the_uninterrupted_one(tmp_path):
  whole = toy.run(tmp_path / "whole", **KWARGS)
  toy.run(tmp_path / "split", **{**KWARGS, "train_steps": 5, "checkpoint_every": 5})
  resumed = toy.run(tmp_path / "split", **KWARGS)
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0
  for a, b in zip(whole.optimizers["a"].variables, resumed.optimizers["a"].variables):
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_too_many_skips_in_a_row_stop_the_run_with_its_state_saved(tmp_path):
  gin.bind_parameter("SkipGuard.max_consecutive", 3)
  with pytest.raises(TrainingFailed, match=r"^3 non-finite windows in a row were skipped \(SkipGuard.max_consecutive"
                                           r" = 3\) by update 8; the state is saved as .*ckpt-8"):
    toy.run(tmp_path, **{**KWARGS, "examples": _nan_in(48, 10**9), "train_steps": 20, "steps_per_loop": 4})
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
  assert reader.get_tensor("optimizer_a/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3


def test_the_guard_counts_runs_and_shares_of_skips():
  guard = SkipGuard("skip", max_consecutive=3, max_share=0.003)
  row = lambda *flags: {"a/nonfinite_skipped": np.array(flags, float), "a/loss": np.ones(len(flags))}
  assert guard.observe(row(0, 1, 1, 0), 0) is None and guard.consecutive == 0 and guard.total == 2
  assert guard.observe({"a/loss": np.ones(3)}, 4) is None  # under 'stop' there is no such figure
  # another phase's updates (NaN in a's figure) break no run
  assert guard.observe({"a/nonfinite_skipped": np.array([1.0, np.nan]),
                        "b/nonfinite_skipped": np.array([np.nan, 0.0])}, 4) is None and guard.consecutive == 0
  assert guard.observe(row(1), 6) == f"4 of the last 7 updates were non-finite windows, skipped (SkipGuard.max_share" \
                                     f" = 0.003 of {RECENT})"
  assert SkipGuard("skip", max_consecutive=2).observe(row(1, 1), 0).startswith("2 non-finite windows in a row")


@pytest.mark.parametrize("kwargs, message", [
    (dict(policy="rollback"), r"train.on_nonfinite = 'rollback': use 'stop' or 'skip'"),
    (dict(max_consecutive=0), r"SkipGuard.max_consecutive must be a positive integer, got 0"),
    (dict(max_share=1.5), r"SkipGuard.max_share must be a share in \(0, 1\], got 1.5"),
])
def test_bad_settings_are_one_line(kwargs, message):
  with pytest.raises(UserError, match=message):
    SkipGuard(**kwargs)
