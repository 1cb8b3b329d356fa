"""trainer.cycle: calls that run across phase boundaries compute what calls cut at every boundary compute.

Resume from a checkpoint taken mid-cycle is tests/test_train.py's resume test (its calls now span phases);
preemption mid-cycle on every worker is tests/test_multi_worker.py's.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests import graphs, toy
from trainer.errors import TrainingFailed
from trainer.tasks import regression

SCHEDULES = {
    "1:1": dict(cycle=[("a", 1), ("b", 1)]),
    "5:1": dict(cycle=[("a", 5), ("b", 1)]),
    "warmup_then_cycle": dict(warmup=[("c", 3)], cycle=[("a", 2, 2), ("b", 1)]),
    "round_robin_3": dict(cycle=[("a", 1), ("b", 2), ("c", 1)]),
    # trainer.phase: a joint phase, and a second loss for 'a' in every 3rd cycle only (a period of 3 cycles)
    "joint": dict(cycle=[("ab", 1), ("c", 1)], phases=toy.phases(ab=(("a", "b"), toy.summed_prediction_error))),
    "lazy_every": dict(cycle=[("a", 1), ("a_reg", 1), ("b", 1)], every={"a_reg": 3},
                       phases=toy.phases(a_reg=("a", regression.absolute_error))),
}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_calls_across_phases_end_bit_for_bit_where_calls_cut_at_every_phase_end(tmp_path, schedule):
  # log_every=7 cuts the spanning run's calls mid-cycle, so calls start at several cycle positions; every
  # schedule's first call runs a whole cycle
  kwargs = dict(train_steps=29, log_every=7, **schedule)
  spanning = toy.run(tmp_path / "span", **kwargs)
  cut = toy.run(tmp_path / "cut", span_phases=False, **kwargs)
  assert spanning.cycle is not None and spanning.cycle.traces == 1 and cut.cycle is None
  # whole cycles run straight-line unless a window accumulates (K > 1: cycle.py says why), as 'a' of the warm-up
  # one, or a (phase, K) has two entries, as 'a' in a period of three cycles
  straight = all(phase[2:] in ((), (1,)) for phase in schedule["cycle"]) and "every" not in schedule
  assert spanning.cycle.straight == straight
  for n in "abc":
    for a, b in zip(toy.weights(spanning)[n], toy.weights(cut)[n]):
      np.testing.assert_array_equal(a, b)
    assert int(spanning.optimizers[n].iterations.numpy()) == int(cut.optimizers[n].iterations.numpy())
  figures = lambda log: {k: v for k, v in log.items() if "/" in k}  # the logged figures, e.g. a/loss, b/grad_norm
  assert figures(spanning.last_log) == figures(cut.last_log) and figures(cut.last_log)
  # the runs did alternate: every model of the cycle trained
  assert all(int(spanning.optimizers[n].iterations.numpy()) > 0 for n in "ab")


@pytest.mark.parametrize("jit_compile", [True, False])  # on GPU replicas and on CPU ones
def test_the_cycle_program_holds_one_all_reduce_per_window_and_traces_once(tmp_path, jit_compile):
  gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  # (a, K=3) appears twice in the cycle and shares one branch; calls of 3 start at every cycle position
  run = toy.run(tmp_path, replicas=2, cycle=[("a", 2, 3), ("b", 1), ("a", 1, 3)], train_steps=11,
                steps_per_loop=3)
  assert run.cycle.traces == 1 and len(run.cycle.branches) == 2
  assert run.cycle.collectives_per_update() == 1
  graphs.assert_updates_read_their_own_devices_all_reduce(run.cycle._graph, windows=2)  # pylint: disable=protected-access
  assert [int(run.optimizers[n].iterations.numpy()) for n in "ab"] == [8, 3]
  assert not run.cycle.straight  # (a, K=3) in two phases: every update runs in the switch


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_straight_line_cycle_holds_one_all_reduce_per_window_and_calls_each_window_once_per_cycle(
    tmp_path, jit_compile):
  gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  # calls of 4 from positions 0, 1, 2, ...: head, whole cycles and tail all run; 'a' is a phase of 2 updates
  run = toy.run(tmp_path, replicas=2, cycle=[("a", 2), ("b", 1)], train_steps=11, steps_per_loop=4)
  assert run.cycle.straight and run.cycle.traces == 1
  assert run.cycle.collectives_per_update() == 1
  graphs.assert_updates_read_their_own_devices_all_reduce(run.cycle._graph, windows=2)  # pylint: disable=protected-access
  assert [int(run.optimizers[n].iterations.numpy()) for n in "ab"] == [8, 3]


def test_a_non_finite_window_mid_call_stops_before_it_and_names_its_update_and_phase(tmp_path):
  def examples(indices):  # examples 96-111 are NaN: with 16 per update, update 7 (model 'b') is the bad one
    batch = regression.regression_examples(indices)
    return {"x": batch["x"], "y": tf.where((indices[:, None] >= 96) & (indices[:, None] < 112), np.nan, batch["y"])}

  with pytest.raises(TrainingFailed, match=r"at update 7 \(phase 'b': b/loss=nan.*saved as .*ckpt-6"):
    toy.run(tmp_path, cycle=[("b", 1), ("a", 1)], train_steps=20, examples=examples)
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
  assert reader.get_tensor("update/.ATTRIBUTES/VARIABLE_VALUE") == 6
  assert reader.get_tensor("optimizer_b/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3
  # 'a', next in the same call and on good examples, did not run
  assert reader.get_tensor("optimizer_a/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3
