"""Which model trains at which update: a warm-up prefix that runs once, then a repeating cycle of phases.

The position in the schedule is a pure function of the global update counter, so a resumed run lands in the
same phase it stopped in.
"""

import bisect
import itertools
from typing import NamedTuple, Sequence

import gin

from trainer.errors import UserError, check_count


class Phase(NamedTuple):
  """`updates` optimizer updates of `model`, each accumulating `micro_batches` micro-batches."""

  model: str
  updates: int
  micro_batches: int = 1


class Position(NamedTuple):
  """Where an update falls: its phase, the phase's index in the schedule, and the updates left in the phase."""

  phase: Phase
  index: int
  updates_left: int


def _as_phase(spec, where: str, default_micro_batches: int) -> Phase:
  if isinstance(spec, Phase):
    phase = spec
  elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
    phase = Phase(*spec) if len(spec) == 3 else Phase(spec[0], spec[1], default_micro_batches)
  else:
    raise UserError(f"{where}: a phase is ('model', updates) or ('model', updates, micro_batches), got {spec!r}")
  if not isinstance(phase.model, str):
    raise UserError(f"{where}: the model name must be a string, got {phase.model!r}")
  for field in ("updates", "micro_batches"):
    check_count(f"{where}: {field}", getattr(phase, field))
  return phase


@gin.configurable
class Schedule:
  """A warm-up prefix of phases that runs once, then a cycle of phases repeated until training ends.

  In gin, a phase is a tuple `('model', updates)` or `('model', updates, micro_batches)`:

      Schedule.warmup = [('autoencoder', 100)]       # pretrain once
      Schedule.cycle = [('critic', 5), ('generator', 1)]
      Schedule.micro_batches = 4                      # K for phases that do not give their own
  """

  def __init__(self, cycle: Sequence = gin.REQUIRED, warmup: Sequence = (), micro_batches: int = 1):
    check_count("Schedule.micro_batches", micro_batches)
    if not cycle:
      raise UserError("Schedule.cycle is empty: give at least one phase, e.g. [('model', 1)]")
    self.warmup = tuple(_as_phase(p, f"Schedule.warmup[{i}]", micro_batches) for i, p in enumerate(warmup))
    self.cycle = tuple(_as_phase(p, f"Schedule.cycle[{i}]", micro_batches) for i, p in enumerate(cycle))
    self.phases = self.warmup + self.cycle
    # Cumulative update and micro-batch counts at the start of each phase (and one past the end).
    self._update_starts = [0, *itertools.accumulate(p.updates for p in self.phases)]
    self._micro_starts = [0, *itertools.accumulate(p.updates * p.micro_batches for p in self.phases)]
    self.warmup_updates = self._update_starts[len(self.warmup)]
    self._warmup_micro = self._micro_starts[len(self.warmup)]
    self.cycle_updates = self._update_starts[-1] - self.warmup_updates
    self._cycle_micro = self._micro_starts[-1] - self._warmup_micro

  @property
  def models(self) -> list[str]:
    """The model names the schedule trains, in order of first appearance."""
    return list(dict.fromkeys(p.model for p in self.phases))

  def _locate(self, update: int) -> tuple[int, int, int]:
    """Returns (cycles completed, phase index, update offset inside the phase)."""
    if update < 0:
      raise ValueError(f"update must be >= 0, got {update}")
    cycles = 0
    if update >= self.warmup_updates:
      cycles, update = divmod(update - self.warmup_updates, self.cycle_updates)
      update += self.warmup_updates
    index = bisect.bisect_right(self._update_starts, update) - 1
    return cycles, index, update - self._update_starts[index]

  def position(self, update: int) -> Position:
    """The phase that global update `update` (0-based) belongs to."""
    _, index, offset = self._locate(update)
    phase = self.phases[index]
    return Position(phase, index, phase.updates - offset)

  def cycle_position(self, update: int) -> int:
    """Where update `update`, past the warm-up, falls in its cycle (0: the cycle's first update)."""
    return (update - self.warmup_updates) % self.cycle_updates

  def micro_batches_before(self, update: int) -> int:
    """How many micro-batches the updates before `update` consume in total."""
    cycles, index, offset = self._locate(update)
    return cycles * self._cycle_micro + self._micro_starts[index] + offset * self.phases[index].micro_batches

  def updates_per_model(self, total_updates: int) -> dict[str, int]:
    """How many of the first `total_updates` updates each model gets."""
    counts = dict.fromkeys(self.models, 0)
    update = 0
    while update < total_updates:
      position = self.position(update)
      n = min(position.updates_left, total_updates - update)
      counts[position.phase.model] += n
      update += n
    return counts

  def __repr__(self) -> str:
    return f"Schedule(warmup={list(self.warmup)}, cycle={list(self.cycle)})"
