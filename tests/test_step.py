"""The step's numbers: accumulation, replica invariance, alternation, several updates per compiled loop, traces."""

import functools

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import graphs, toy
from trainer import step
from trainer.errors import UserError
from trainer.step import Status


# Adam is nearly invariant to a constant factor on the gradient, so a wrong loss scale (per-replica instead of
# global batch, or K forgotten) would pass with Adam alone: SGD makes these tests see the scale.
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(tmp_path, optimizer):
  accumulated = toy.run(tmp_path / "k4", cycle=[("a", 1, 4)], global_batch_size=8, train_steps=5, optimizer=optimizer)
  one_batch = toy.run(tmp_path / "k1", cycle=[("a", 1, 1)], global_batch_size=32, train_steps=5, optimizer=optimizer)
  diff = toy.max_diff(toy.weights(accumulated), toy.weights(one_batch))
  assert diff <= 1e-6, diff
  # and the runs did train: the weights moved away from their initial values
  fresh = toy.run(tmp_path / "fresh", cycle=[("a", 1, 1)], global_batch_size=32, train_steps=1)
  assert toy.max_diff(toy.weights(one_batch), toy.weights(fresh)) > 1e-3


@pytest.mark.parametrize("optimizer, jit_compile", [("adam", "auto"), ("sgd", "auto"), ("sgd", True)])
def test_two_replicas_end_on_the_weights_of_one(tmp_path, optimizer, jit_compile):
  gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  replicas = 2  # 4 replicas are compared through trainer.main in tests/test_main.py
  kwargs = dict(cycle=[("a", 2, 2), ("b", 1, 3)], global_batch_size=16, train_steps=7, optimizer=optimizer)
  one = toy.run(tmp_path / "r1", replicas=1, **kwargs)
  many = toy.run(tmp_path / f"r{replicas}", replicas=replicas, **kwargs)
  diff = toy.max_diff(toy.weights(one), toy.weights(many))
  assert diff <= 1e-6, diff


def test_jit_compile_auto_is_plain_graphs_on_cpu_replicas_and_a_typo_is_one_line(tmp_path):
  run = toy.run(tmp_path / "auto", cycle=[("a", 1), ("b", 1)], train_steps=2)
  assert [loop.jit_compile for loop in run.loops.values()] == [False, False]
  gin.bind_parameter("PhaseLoop.jit_compile", "yes")
  with pytest.raises(UserError, match=r"^PhaseLoop.jit_compile = 'yes': use True, False or 'auto'\n"):
    toy.run(tmp_path / "typo", train_steps=1)


def test_critic_5_generator_1_updates_only_the_active_model(tmp_path):
  run = toy.run(tmp_path, cycle=[("a", 5), ("b", 1)], train_steps=12, steps_per_loop=100)
  assert int(run.optimizers["a"].iterations.numpy()) == 10
  assert int(run.optimizers["b"].iterations.numpy()) == 2


def test_a_model_is_bit_for_bit_unchanged_across_the_other_models_phase(tmp_path):
  before = toy.run(tmp_path, cycle=[("a", 3), ("b", 4)], train_steps=3)
  snapshot = {n: [np.array(v) for v in o.variables] for n, o in before.optimizers.items()}
  weights = toy.weights(before)
  after = toy.run(tmp_path, cycle=[("a", 3), ("b", 4)], train_steps=7)  # resumes: 4 updates of 'b' only
  for a, b in zip(weights["a"], toy.weights(after)["a"]):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(snapshot["a"], [np.array(v) for v in after.optimizers["a"].variables]):
    np.testing.assert_array_equal(a, b)
  assert toy.max_diff({"b": weights["b"]}, {"b": toy.weights(after)["b"]}) > 1e-4


def test_several_updates_per_compiled_loop_equal_one_per_call(tmp_path):
  kwargs = dict(cycle=[("a", 4, 2), ("b", 3)], train_steps=14)
  looped = toy.run(tmp_path / "looped", steps_per_loop=100, **kwargs)
  single = toy.run(tmp_path / "single", steps_per_loop=1, **kwargs)
  for n in "ab":
    for a, b in zip(toy.weights(looped)[n], toy.weights(single)[n]):
      np.testing.assert_array_equal(a, b)


def test_each_phase_traces_once(tmp_path):
  run = toy.run(tmp_path, cycle=[("a", 2, 2), ("b", 3)], train_steps=23, steps_per_loop=2, log_every=3,
                span_phases=False)
  assert set(run.loops) == {("a", 2), ("b", 1)} and run.cycle is None
  assert [loop.traces for loop in run.loops.values()] == [1, 1]


# XLA is what "auto" picks on GPU replicas, plain graphs on CPU ones: both are checked here on CPU devices.
@pytest.mark.parametrize("jit_compile", [True, False])
def test_one_packed_all_reduce_per_update_carries_gradients_and_figures(tmp_path, jit_compile):
  gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  run = toy.run(tmp_path, replicas=2, cycle=[("a", 2, 3), ("b", 1)], train_steps=3, span_phases=False)
  assert {key: loop.collectives_per_update() for key, loop in run.loops.items()} == {("a", 3): 1, ("b", 1): 1}
  # ... and each replica's update reads the all-reduce result on its own device: no copy from replica 0
  for loop in run.loops.values():
    graphs.assert_updates_read_their_own_devices_all_reduce(loop._graph, windows=1)  # pylint: disable=protected-access


def _regularised(name, l2=0.05):
  regulariser = keras.regularizers.L2(l2) if l2 else None
  inputs = keras.Input((4,))
  hidden = keras.layers.Dense(8, activation="relu", kernel_regularizer=regulariser)(inputs)
  outputs = keras.layers.Dense(1, kernel_regularizer=regulariser)(hidden)
  return keras.Model(inputs, outputs, name=name)


def test_regularisation_losses_count_once_per_update_however_the_window_is_split(tmp_path):
  kwargs = dict(train_steps=5, optimizer="sgd", models={n: functools.partial(_regularised, n) for n in "ab"})
  one_batch = toy.run(tmp_path / "k1", cycle=[("a", 1, 1)], global_batch_size=32, **kwargs)
  accumulated = toy.run(tmp_path / "k4", cycle=[("a", 1, 4)], global_batch_size=8, **kwargs)
  two_replicas = toy.run(tmp_path / "r2", replicas=2, cycle=[("a", 1, 4)], global_batch_size=8, **kwargs)
  assert one_batch.models["a"].losses  # the branch under test runs
  assert toy.max_diff(toy.weights(accumulated), toy.weights(one_batch)) <= 1e-6
  assert toy.max_diff(toy.weights(two_replicas), toy.weights(one_batch)) <= 1e-6
  # and the penalty is large enough to see: without it the same run ends elsewhere
  plain = toy.run(tmp_path / "plain", cycle=[("a", 1, 1)], global_batch_size=32,
                  **{**kwargs, "models": {n: functools.partial(_regularised, n, 0) for n in "ab"}})
  assert toy.max_diff(toy.weights(plain), toy.weights(one_batch)) > 1e-4


@pytest.mark.parametrize("kind", [keras.optimizers.SGD, keras.optimizers.Adam], ids=["sgd", "adam"])
def test_clipping_applies_to_the_window_gradient_after_the_all_reduce(tmp_path, kind):
  clipped = lambda: kind(0.05, global_clipnorm=0.3)
  kwargs = dict(train_steps=5, log_every=1, optimizers={"a": clipped, "b": clipped})
  one_batch = toy.run(tmp_path / "k1", cycle=[("a", 1, 1)], global_batch_size=32, **kwargs)
  accumulated = toy.run(tmp_path / "k4", cycle=[("a", 1, 4)], global_batch_size=8, **kwargs)
  two_replicas = toy.run(tmp_path / "r2", replicas=2, cycle=[("a", 1, 4)], global_batch_size=8, **kwargs)
  assert one_batch.last_log["a/grad_norm"] > 0.3  # the threshold binds (the figure is the norm before clipping)
  assert toy.max_diff(toy.weights(accumulated), toy.weights(one_batch)) <= 1e-6
  assert toy.max_diff(toy.weights(two_replicas), toy.weights(one_batch)) <= 1e-6
  unclipped = toy.run(tmp_path / "none", cycle=[("a", 1, 1)], global_batch_size=32,
                      **{**kwargs, "optimizers": {"a": lambda: kind(0.05), "b": lambda: kind(0.05)}})
  assert toy.max_diff(toy.weights(unclipped), toy.weights(one_batch)) > 1e-3


@pytest.mark.parametrize("loss, norm, scale, live, expected", [
    (1.0, 2.0, None, True, Status.APPLIED),
    (float("nan"), 2.0, None, True, Status.STOP),
    (1.0, float("inf"), None, True, Status.STOP),
    (1.0, float("inf"), 4.0, True, Status.SKIPPED),  # float16 overflow: the scale halves and training goes on
    (1.0, float("inf"), 1.0, True, Status.STOP),  # ... unless it cannot halve any more
    (float("nan"), 2.0, 4.0, True, Status.STOP),  # a non-finite loss is never an overflow
    (1.0, 2.0, None, False, Status.NOT_LIVE),
])
def test_a_window_status_is_decided_from_its_reduced_figures_and_norms(loss, norm, scale, live, expected):
  status, _, _ = step.decide([tf.constant(loss)], [tf.constant(1.0), tf.constant(norm)],
                             None if scale is None else tf.constant(scale), tf.constant(live))
  assert Status(int(status)) == expected
