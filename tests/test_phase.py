"""trainer.phase: joint phases, per-model losses and a second loss for one model keep every guarantee of the step.

Through the real `train` function on tests/toy.py's models: accumulation and replica counts change nothing, a
model no phase trains stays bit for bit, one all-reduce per window, a bad window stops before it.
"""

import json

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import graphs, toy
from trainer.errors import TrainingFailed, UserError
from trainer.tasks import models as builders
from trainer.tasks import regression

FORMS = {
    "joint": toy.phases(ab=(("a", "b"), toy.summed_prediction_error)),
    "per_model": toy.phases(ab=(("a", "b"), toy.per_model)),
}
# (a second loss for one model is a one-model phase, whose window is a model-named phase's: tests/test_step.py;
# it is in the resume, figures and cycle tests here and in tests/equivalence.gin's multi-replica runs)


def _equal(x, y, names="abc"):
  for n in names:
    for a, b in zip(toy.weights(x)[n], toy.weights(y)[n]):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", FORMS, ids=FORMS.keys())
def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(tmp_path, form):
  kwargs = dict(phases=FORMS[form], train_steps=5, optimizer="sgd")
  accumulated = toy.run(tmp_path / "k4", cycle=[("ab", 1, 4)], global_batch_size=8, **kwargs)
  big = toy.run(tmp_path / "big", cycle=[("ab", 1)], global_batch_size=32, **kwargs)
  assert toy.max_diff(toy.weights(accumulated), toy.weights(big)) <= 1e-6
  fresh = toy.run(tmp_path / "fresh", cycle=[("c", 1)], train_steps=1)  # 'a' and 'b' as initialised
  assert toy.max_diff({"a": toy.weights(big)["a"]}, {"a": toy.weights(fresh)["a"]}) > 1e-3


@pytest.mark.parametrize("form", FORMS, ids=FORMS.keys())
def test_two_replicas_end_on_the_weights_of_one(tmp_path, form):
  kwargs = dict(phases=FORMS[form], cycle=[("ab", 2, 2), ("c", 1)], global_batch_size=16, train_steps=7,
                optimizer="sgd")
  one = toy.run(tmp_path / "r1", replicas=1, **kwargs)
  two = toy.run(tmp_path / "r2", replicas=2, **kwargs)
  assert toy.max_diff(toy.weights(one), toy.weights(two)) <= 1e-6


@pytest.mark.parametrize("form", ["separable_joint", "per_model"])
def test_each_trained_model_descends_its_own_part_with_its_own_optimizer(tmp_path, form):
  # a's squared error and b's absolute error, as one loss or as two: after one update each model is where its
  # own one-model phase on the same micro-batch puts it (a gradient crossed between models would move it elsewhere)
  loss = getattr(toy, form)
  both = toy.run(tmp_path / "both", phases=toy.phases(ab=(("a", "b"), loss)), cycle=[("ab", 1)], train_steps=1)
  alone = {n: toy.run(tmp_path / n, cycle=[(n, 1)], train_steps=1) for n in "ab"}
  for n in "ab":
    _equal(both, alone[n], n)
    assert int(both.optimizers[n].iterations.numpy()) == 1
  assert int(both.optimizers["c"].iterations.numpy()) == 0


def test_a_model_no_phase_trains_is_bit_for_bit_unchanged_weights_slots_and_iterations(tmp_path):
  untouched = toy.run(tmp_path, cycle=[("c", 1)], train_steps=1)  # 'c' after its one update
  slots = [np.array(v) for v in untouched.optimizers["c"].variables]
  run = toy.run(tmp_path, phases=FORMS["joint"], cycle=[("ab", 3), ("c", 100)], warmup=[("c", 1)],
                train_steps=4)  # resumes: 3 joint updates of 'a' and 'b'
  _equal(run, untouched, "c")
  for a, b in zip(slots, [np.array(v) for v in run.optimizers["c"].variables]):
    np.testing.assert_array_equal(a, b)
  assert [int(run.optimizers[n].iterations.numpy()) for n in "abc"] == [3, 3, 1]


def _normalised(name):
  inputs = keras.Input((4,))
  x = keras.layers.BatchNormalization(momentum=0.5, name=f"{name}_bn")(keras.layers.Dense(8)(inputs))
  return keras.Model(inputs, keras.layers.Dense(1)(x), name=name)


def _uses_n_in_training_mode(models, batch, trains):
  prediction = models[trains](batch["x"], training=True) + models["n"](batch["x"], training=True)
  return {"loss": tf.reduce_mean(tf.square(prediction - batch["y"]), axis=1)}


def test_batch_norm_statistics_of_a_model_the_loss_runs_in_training_mode_stay_frozen_on_every_replica(tmp_path):
  models = {"a": lambda: builders.mlp(4, 1, (8,), name="a"), "n": lambda: _normalised("n")}
  sgd = lambda: keras.optimizers.SGD(0.05)
  phases = toy.phases(a_with_n=("a", _uses_n_in_training_mode), n_alone=("n", regression.squared_error))
  kwargs = dict(models=models, optimizers={"a": sgd, "n": sgd}, phases=phases, replicas=2, global_batch_size=16)
  # each replica's copy of n's moving mean and variance
  copies = lambda run: [[np.array(c) for c in v.value.values] for v in
                        run.models["n"].get_layer("n_bn").non_trainable_variables]
  frozen = toy.run(tmp_path / "a", cycle=[("a_with_n", 1)], train_steps=3, **kwargs)
  for initial, variable in zip((0.0, 1.0), copies(frozen)):  # moving mean, moving variance
    assert len(variable) == 2
    for copy in variable:
      np.testing.assert_array_equal(copy, np.full_like(copy, initial))  # not moved on any replica
  # ... while a phase that trains 'n' moves them, by the replica mean: the same on every replica
  moved = copies(toy.run(tmp_path / "n", cycle=[("n_alone", 1)], train_steps=2, **kwargs))
  for initial, variable in zip((0.0, 1.0), moved):
    np.testing.assert_array_equal(variable[0], variable[1])
    assert np.max(np.abs(variable[0] - initial)) > 1e-3


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_joint_phase_is_one_all_reduce_per_window_for_all_its_models(tmp_path, jit_compile):
  gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  run = toy.run(tmp_path, replicas=2, phases=FORMS["joint"], cycle=[("ab", 2, 2), ("c", 1)], train_steps=3,
                span_phases=False)
  assert {key: loop.collectives_per_update() for key, loop in run.loops.items()} == {("ab", 2): 1, ("c", 1): 1}
  for loop in run.loops.values():
    graphs.assert_updates_read_their_own_devices_all_reduce(loop._graph, windows=1)  # pylint: disable=protected-access


def test_figures_are_named_by_phase_in_the_log_and_metrics(tmp_path):
  phases = {**toy.phases(ab=(("a", "b"), toy.per_model)), **toy.phases(a_reg=("a", regression.absolute_error))}
  run = toy.run(tmp_path, phases=phases, cycle=[("a", 1), ("a_reg", 1), ("ab", 1)], train_steps=6, log_every=3)
  record = json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])
  assert {"a/loss", "a/grad_norm", "a_reg/loss", "a_reg/grad_norm", "ab/loss/a", "ab/loss/b", "ab/grad_norm/a",
          "ab/grad_norm/b"} <= set(record)
  assert record["a/loss"] != record["a_reg/loss"]
  assert run.last_log["ab/loss/b"] == record["ab/loss/b"]
  assert [int(run.optimizers[n].iterations.numpy()) for n in "ab"] == [6, 2]  # a_reg shares a's optimizer


def test_a_non_finite_joint_window_stops_before_it_for_every_model(tmp_path):
  def examples(indices):  # examples 32-47 are NaN: with 16 per update, update 3 (the joint phase) is the bad one
    batch = regression.regression_examples(indices)
    return {"x": batch["x"], "y": tf.where((indices[:, None] >= 32) & (indices[:, None] < 48), np.nan, batch["y"])}

  stop = r"at update 3 \(phase 'ab': ab/loss=nan, ab/grad_norm/a=nan, ab/grad_norm/b=nan\).*ckpt-2"
  with pytest.raises(TrainingFailed, match=stop):
    toy.run(tmp_path, phases=FORMS["joint"], cycle=[("c", 2), ("ab", 1)], train_steps=9, examples=examples)
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
  assert [reader.get_tensor(f"optimizer_{n}/_iterations/.ATTRIBUTES/VARIABLE_VALUE") for n in "abc"] == [0, 0, 2]


@pytest.mark.parametrize("phases, message", [
    (toy.phases(ab=(("a", "z"), toy.summed_prediction_error)), r"ab/phase.trains names 'z', which is not in train"),
    (toy.phases(ab=(("a", "a"), toy.summed_prediction_error)), r"ab/phase.trains = \('a', 'a'\): name each model once"),
    (toy.phases(ab=(("a", "b"), regression.squared_error)), None),
    (toy.phases(ab=(("a", "b"), lambda models, batch, trains: regression.squared_error(models, batch, "a"))),
     r"phase 'ab' trains model 'b', but its loss never calls it .*drop it from ab/phase.trains"),
    ({"ab": toy.per_model}, r"train.phases\['ab'\] must be a phase, e.g. @ab/phase\(\)"),
])
def test_an_impossible_phase_is_one_line_naming_the_binding(tmp_path, phases, message):
  if message is None:  # a one-model loss in a two-model phase: it indexes models by the tuple (a KeyError)
    def loss(models, batch, trains):
      return {"out": tf.reduce_mean(models["a"](batch["x"]), axis=1)}
    phases = toy.phases(ab=(("a", "b"), loss))
    message = r"the loss of phase 'ab' returned \['out'\]; it must return 'loss', or one loss per model"
  with pytest.raises(UserError, match=message):
    toy.run(tmp_path, phases=phases, cycle=[("ab", 1)], train_steps=1)


@pytest.mark.slow
def test_a_run_resumed_mid_period_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
  phases = {**FORMS["joint"], **toy.phases(a_reg=("a", regression.absolute_error))}
  # a period of 2 cycles: ab, a_reg, c, c | ab, c, c (7 updates); the split run stops at update 9, mid-period
  kwargs = dict(phases=phases, cycle=[("ab", 1, 2), ("a_reg", 1), ("c", 2)], every={"a_reg": 2}, train_steps=17,
                checkpoint_every=4)
  whole = toy.run(tmp_path / "whole", **kwargs)
  toy.run(tmp_path / "split", **{**kwargs, "train_steps": 9})
  resumed = toy.run(tmp_path / "split", **kwargs)
  _equal(whole, resumed)
  for n in "abc":
    for a, b in zip(whole.optimizers[n].variables, resumed.optimizers[n].variables):
      np.testing.assert_array_equal(np.array(a), np.array(b))
  assert [int(whole.optimizers[n].iterations.numpy()) for n in "abc"] == [8, 5, 9]
