"""The outer loop: compiled spans of updates between the boundaries the actions declare, then the actions due.

As in Orbit's Controller, periodic work (log, checkpoint, evaluate, export) is a list of actions, each declared
once with its interval, and that one interval decides both where a compiled call is cut and whether the action
runs after it. Every worker cuts its calls at the same updates, also for an action only the chief runs: each call
holds collectives that all workers must join, so a call cut on one worker and not on another would deadlock.
"""

import os
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.errors import ClusterFault, Preempted, TrainingFailed
from trainer.faults import Preemption, Watchdog
from trainer.cycle import CycleLoop
from trainer.divergence import SkipGuard
from trainer.schedule import Entry, Schedule
from trainer.step import PhaseLoop
from trainer.telemetry import Telemetry

# What a lost or failed peer raises inside a collective (UnavailableError after the coordination heartbeat).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError)


class Action:
  """Periodic work, run after the update that is a multiple of `every` (0: never before the end) and after the
  last update of the run. `chief_only` actions run on the chief alone but cut every worker's calls."""

  every: int = 0
  chief_only: bool = False

  def __call__(self, update: int) -> None:
    raise NotImplementedError

  def due(self, update: int, train_steps: int) -> bool:
    return update == train_steps or (self.every > 0 and update % self.every == 0)

  def next_boundary(self, update: int) -> int:
    """The first update after `update` at which this action runs (train_steps bounds the run anyway)."""
    return (update // self.every + 1) * self.every if self.every > 0 else np.iinfo(np.int64).max


class Checkpointer(Action):
  """Saves every `every` updates and at the end; the controller also saves through it before it stops."""

  def __init__(self, save: Callable[[int], str | None], every: int, directory: str, saved_at: int):
    """`save(update)` writes the checkpoint; `directory` is where the chief keeps them (for messages)."""
    self.every, self.directory, self.saved_at = every, directory, saved_at
    self._save = save

  def __call__(self, update: int) -> None:
    self.save(update)

  def save(self, update: int) -> str | None:
    path = self._save(update)
    self.saved_at = update
    if path and os.path.dirname(path) == self.directory.rstrip("/"):  # the chief's (a worker's scratch copy: no)
      logging.info("checkpoint at update %d: %s", update, path)
    return path


class Controller:
  """Runs `schedule` from update `start` to `train_steps`, in compiled calls of at most `steps_per_loop` updates.

  Owns the loop state: the update, the PhaseLoop of each (phase, K), the cycle's CycleLoop, the last save (through
  `checkpointer`). `make_loop(entry)` builds an entry's PhaseLoop on first use. With `span_phases` (and every cycle
  phase on the per-replica update) a call past the warm-up runs across phase boundaries as one CycleLoop program;
  otherwise every call ends at a phase boundary. Stops with TrainingFailed before a non-finite
  update, with Preempted after a preemption signal on any worker (both after saving), and with ClusterFault when
  a peer is lost.
  """

  def __init__(self, *, schedule: Schedule, train_steps: int, steps_per_loop: int, start: int,
               make_loop: Callable[[Entry], PhaseLoop], iterator: Iterator, telemetry: Telemetry,
               checkpointer: Checkpointer, actions: list[Action], watchdog: Watchdog, preemption: Preemption,
               chief: bool, span_phases: bool = True, guard: SkipGuard | None = None):
    self.update = start
    self.loops: dict[tuple[str, int], PhaseLoop] = {}
    self.cycle: CycleLoop | None = None
    self._span_phases = span_phases
    self._schedule, self._train_steps, self._steps_per_loop = schedule, train_steps, steps_per_loop
    self._make_loop, self._iterator, self._telemetry = make_loop, iterator, telemetry
    self._checkpointer, self._actions = checkpointer, [*actions, checkpointer]
    self._watchdog, self._preemption, self._chief = watchdog, preemption, chief
    self._guard = guard or SkipGuard()

  def run(self) -> int:
    """Trains to `train_steps`; returns the update reached."""
    try:
      while self.update < self._train_steps:
        self._train(*self._next_span())
        for action in self._actions:
          if action.due(self.update, self._train_steps) and (self._chief or not action.chief_only):
            action(self.update)
        if self.update < self._train_steps and self._preemption.requested():
          self._stop_preempted()
    except _PEER_ERRORS as e:
      raise ClusterFault(f"lost contact with a peer worker after update {self.update} ({type(e).__name__}); "
                         "restart the whole job (launch.local --max_restarts does): it resumes from the last "
                         f"checkpoint (update {self._checkpointer.saved_at})") from e
    return self.update

  def _next_span(self) -> tuple[PhaseLoop | CycleLoop, int, int]:
    """The loop to run at the current update, its position there, and how many updates to run before the next
    boundary (the end of the phase unless the loop spans the cycle)."""
    position = self._schedule.position(self.update)
    ends = [self._train_steps, self.update + self._steps_per_loop]
    ends += [action.next_boundary(self.update) for action in self._actions]
    loop = self._cycle_loop() if self.update >= self._schedule.warmup_updates else None
    if loop is None:
      loop = self._phase_loop(position.phase)
      ends.append(self.update + position.updates_left)
    return loop, self._schedule.cycle_position(self.update), min(ends) - self.update

  def _phase_loop(self, phase: Entry) -> PhaseLoop:
    key = (phase.name, phase.micro_batches)
    if key not in self.loops:
      self.loops[key] = self._make_loop(phase)
    return self.loops[key]

  def _cycle_loop(self) -> CycleLoop | None:
    if self.cycle is None and self._span_phases:
      loops = {(p.name, p.micro_batches): self._phase_loop(p) for p in self._schedule.cycle}
      if not all(loop.replica_update for loop in loops.values()):  # Keras's apply runs outside the program
        self._span_phases = False
        return None
      self.cycle = CycleLoop(self._schedule.cycle, loops)
    return self.cycle

  def _train(self, loop: PhaseLoop | CycleLoop, offset: int, n: int) -> None:
    with self._watchdog.watch(f"updates {self.update + 1}-{self.update + n}"):
      span = loop.run(self._iterator, offset, n)
    self._telemetry.record(span.figures, span.examples)
    diverging = self._guard.observe(span.figures, self.update)
    self.update += span.applied
    if diverging:  # every worker read the same reduced figures, so every worker stops here
      saved = self._checkpointer.save(self.update)
      raise TrainingFailed(f"{diverging} by update {self.update}; the state is saved as {saved}. Lower the learning "
                           "rate or check the data and the losses")
    if span.failed:  # the loop stopped before a non-finite update: keep the last good state
      saved = self._checkpointer.save(self.update)
      phase, figures = span.failed
      bad = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
      raise TrainingFailed(
          f"non-finite loss or gradient at update {self.update + 1} (phase '{phase}': {bad}); that update "
          f"was not applied and the last good state is saved as {saved}. Lower the learning rate of what "
          f"'{phase}' trains, or check its loss")

  def _stop_preempted(self) -> None:
    if self._checkpointer.saved_at != self.update:
      self._checkpointer.save(self.update)
    raise Preempted(f"{self._preemption.signal_name} received; saved update {self.update} of {self._train_steps} "
                    f"in {self._checkpointer.directory}; run the same command again to resume")
