"""trainer.controller: where compiled calls are cut, which actions run after them, and how the loop stops.

The PhaseLoop here is a stand-in that records the calls' lengths: what is tested is the controller's arithmetic.
The real loop under a strategy runs through it in tests/test_train.py and the multi-process tests.
"""

import logging

import numpy as np
import pytest

from trainer import controller as controller_module
from trainer.controller import Action, Checkpointer, Controller
from trainer.errors import Preempted, TrainingFailed
from trainer.faults import Watchdog
from trainer.schedule import Schedule
from trainer.step import Span
from trainer.telemetry import Telemetry


class _Loop:
  """Applies every update it is asked for, except update `bad` (1-based, global), like PhaseLoop's finite stop.
  As a CycleLoop stand-in (`name` None) it records the cycle positions its calls start at."""

  figure_names = ["loss"]
  window_examples = 4
  replica_update = False  # a PhaseLoop on Keras's apply: the controller never spans phases with it

  def __init__(self, calls: list, first: list, bad: int, name: str | None = "a"):
    self._calls, self._first, self._bad, self.name = calls, first, bad, name
    self.offsets: list[int] = []

  def run(self, iterator, offset, n):
    del iterator
    start = self._first[0]
    applied = n if not start < self._bad <= start + n else self._bad - start - 1
    self._calls.append((start, n))
    self.offsets.append(offset)
    self._first[0] += applied
    failed = (self.name, {f"{self.name}/loss": 1.0}) if applied < n else None
    return Span(applied, {f"{self.name}/loss": np.ones(applied)}, applied * self.window_examples, failed)


class _Record(Action):
  def __init__(self, every: int, chief_only: bool = False):
    self.every, self.chief_only, self.ran = every, chief_only, []

  def __call__(self, update: int) -> None:
    self.ran.append(update)


class _Preemption:
  signal_name = "SIGUSR1"

  def __init__(self, at: int | None):
    self.at, self.update = at, [0]

  def requested(self) -> bool:
    return self.at is not None and self.update[0] >= self.at


def _run(tmp_path, *, chief=True, cycle=(("a", 3), ("b", 2)), warmup=(), train_steps=20, steps_per_loop=4,
         actions=(), checkpoint_every=8, bad=10**9, preempt_at=None, saves=None, make_loop=None):
  calls, first, saves = [], [0], [] if saves is None else saves
  preemption = _Preemption(preempt_at)
  preemption.update = first
  checkpointer = Checkpointer(lambda u: saves.append(u) or f"ckpt-{u}", checkpoint_every, str(tmp_path), 0)
  controller = Controller(
      schedule=Schedule(cycle=list(cycle), warmup=list(warmup)), train_steps=train_steps,
      steps_per_loop=steps_per_loop, start=0, iterator=None,
      make_loop=make_loop or (lambda phase: _Loop(calls, first, bad, phase.name)),
      telemetry=Telemetry(str(tmp_path), train_steps, write_files=False), checkpointer=checkpointer,
      actions=list(actions), watchdog=Watchdog(0), preemption=preemption, chief=chief)
  controller.run()
  return controller, calls, saves


def test_calls_are_cut_at_phases_the_loop_length_and_every_action_boundary(tmp_path):
  log = _Record(every=5)
  controller, calls, saves = _run(tmp_path, actions=[log])
  ends = [start + n for start, n in calls]
  # phases end at 3, 5, 8, 10, ...; the log at 5, 10, 15, 20; checkpoints at 8, 16, 20; at most 4 per call
  assert ends == [3, 5, 8, 10, 13, 15, 16, 18, 20]
  assert log.ran == [5, 10, 15, 20] and saves == [8, 16, 20]
  assert controller.update == 20 and set(controller.loops) == {("a", 1), ("b", 1)}


def test_past_the_warm_up_calls_span_phases_and_start_at_their_cycle_position(tmp_path, monkeypatch):
  calls, first, made = [], [0], []

  class SpanningLoop(_Loop):
    replica_update = True

  def cycle_loop(cycle, loops):
    assert [(p.name, p.updates) for p in cycle] == [("a", 3), ("b", 2)] and set(loops) == {("a", 1), ("b", 1)}
    made.append(_Loop(calls, first, 10**9, name="a"))
    return made[-1]

  monkeypatch.setattr(controller_module, "CycleLoop", cycle_loop)
  log = _Record(every=7)
  _run(tmp_path, warmup=[("w", 2)], actions=[log], train_steps=22, checkpoint_every=100,
       make_loop=lambda phase: SpanningLoop(calls, first, 10**9, phase.name))
  # the warm-up (2 updates) is cut at its end; then calls end only at the loop length (4) and the log (7, 14, 21)
  assert [start + n for start, n in calls] == [2, 6, 7, 11, 14, 18, 21, 22]
  assert len(made) == 1 and made[0].offsets == [0, 4, 0, 4, 2, 1, 4]  # (update - 2) % 5


def test_an_action_only_the_chief_runs_cuts_every_workers_calls_the_same(tmp_path):
  runs = {}
  for chief in (True, False):
    evaluation = _Record(every=7, chief_only=True)
    _, calls, _ = _run(tmp_path / str(chief), chief=chief, actions=[_Record(every=5), evaluation])
    runs[chief] = calls, evaluation.ran
  assert runs[True][0] == runs[False][0]  # the same calls, so the same collectives on every worker
  assert 7 in [s + n for s, n in runs[True][0]] and 14 in [s + n for s, n in runs[True][0]]
  assert runs[True][1] == [7, 14, 20] and runs[False][1] == []


def test_an_action_that_runs_only_at_the_end_cuts_nothing(tmp_path):
  at_end = _Record(every=0)
  _, calls, _ = _run(tmp_path, cycle=[("a", 100)], train_steps=12, steps_per_loop=50, actions=[at_end],
                     checkpoint_every=100)
  assert calls == [(0, 12)] and at_end.ran == [12]


def test_a_non_finite_update_stops_the_loop_before_it_and_saves_the_update_before(tmp_path):
  saves = []
  with pytest.raises(TrainingFailed, match=r"at update 7 \(phase 'a': a/loss=1\).*saved as ckpt-6"):
    _run(tmp_path, cycle=[("a", 20)], bad=7, saves=saves)
  assert saves == [6]


def test_a_preemption_saves_once_at_the_next_boundary_and_names_the_signal(tmp_path):
  saves = []
  with pytest.raises(Preempted, match=r"SIGUSR1 received; saved update 10 of 20 in .*; run the same command"):
    _run(tmp_path, cycle=[("a", 20)], steps_per_loop=5, checkpoint_every=10, preempt_at=9, saves=saves)
  assert saves == [10]  # the periodic checkpoint at 10 is the preemption's: not written twice
  saves.clear()
  with pytest.raises(Preempted, match=r"saved update 12 of 20"):
    _run(tmp_path, cycle=[("a", 20)], steps_per_loop=4, checkpoint_every=100, preempt_at=9, saves=saves)
  assert saves == [12]


def test_checkpointer_counts_its_last_save(tmp_path):
  saved = []
  checkpointer = Checkpointer(lambda u: saved.append(u) or f"p{u}", 5, str(tmp_path), saved_at=3)
  assert checkpointer.saved_at == 3 and checkpointer.next_boundary(3) == 5 and not checkpointer.due(4, 9)
  assert checkpointer.save(4) == "p4" and checkpointer.saved_at == 4
  assert checkpointer.due(9, 9) and checkpointer.due(10, 20) and np.iinfo(np.int64).max == Action().next_boundary(1)


def test_a_checkpoint_in_the_runs_directory_is_one_line_a_workers_scratch_copy_none(tmp_path, caplog):
  chief = Checkpointer(lambda u: str(tmp_path / f"ckpt-{u}"), 5, str(tmp_path), saved_at=0)
  worker = Checkpointer(lambda u: f"/tmp/trainer-worker-checkpoints-x/ckpt-{u}", 5, str(tmp_path), saved_at=0)
  with caplog.at_level(logging.INFO, logger="absl"):
    chief.save(5)
    worker.save(5)
  assert [r.getMessage() for r in caplog.records] == [f"checkpoint at update 5: {tmp_path / 'ckpt-5'}"]
