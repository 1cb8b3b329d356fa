"""Which phase trains at which update: a warm-up prefix that runs once, then a repeating cycle of phases.

The position in the schedule is a pure function of the global update counter, so a resumed run lands in the
same phase it stopped in. `every` makes a phase of the cycle run in every N-th cycle only (StyleGAN's lazy
regularisation interval): the schedule then repeats a period of lcm(N, ...) cycles, each holding the phases due
in it, so positions stay a pure function of the counter and the cycle program (trainer.cycle) runs the period.
"""

import bisect
import itertools
import math
from typing import Mapping, NamedTuple, Sequence

import gin

from trainer.errors import UserError, check_count


class Entry(NamedTuple):
  """`updates` updates of phase `name` (a phase of train.phases, or a model: trainer.phase), each accumulating
  `micro_batches` micro-batches."""

  name: str
  updates: int
  micro_batches: int = 1


class Position(NamedTuple):
  """Where an update falls: its entry, the entry's index in the schedule, and the updates left in the entry."""

  phase: Entry
  index: int
  updates_left: int


def _as_entry(spec, where: str) -> tuple[str, int, int | None]:
  if isinstance(spec, Entry):
    spec = tuple(spec)
  if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
    raise UserError(f"{where}: an entry is ('phase', updates) or ('phase', updates, micro_batches), got {spec!r}")
  name, updates, k = (*spec, None) if len(spec) == 2 else spec
  if not isinstance(name, str):
    raise UserError(f"{where}: the phase (or model) name must be a string, got {name!r}")
  check_count(f"{where}: updates", updates)
  if k is not None:
    check_count(f"{where}: micro_batches", k)
  return name, updates, k


@gin.configurable
class Schedule:
  """A warm-up prefix of entries that runs once, then a cycle of entries repeated until training ends.

  In gin, an entry is a tuple `('phase', updates)` or `('phase', updates, micro_batches)`, naming a phase of
  `train.phases` or a model of `train.models` (that model with `train.losses[model]`):

      Schedule.warmup = [('autoencoder', 100)]       # pretrain once
      Schedule.cycle = [('critic', 5), ('generator', 1)]
      Schedule.micro_batches = 4                      # K for entries and phases that do not give their own
      Schedule.every = {'d_reg': 16}                  # d_reg's entries run in every 16th cycle only
  """

  def __init__(self, cycle: Sequence = gin.REQUIRED, warmup: Sequence = (), micro_batches: int = 1,
               every: Mapping[str, int] | None = None):
    check_count("Schedule.micro_batches", micro_batches)
    if not cycle:
      raise UserError("Schedule.cycle is empty: give at least one entry, e.g. [('model', 1)]")
    self._warmup = [_as_entry(p, f"Schedule.warmup[{i}]") for i, p in enumerate(warmup)]
    self._cycle = [_as_entry(p, f"Schedule.cycle[{i}]") for i, p in enumerate(cycle)]
    self._default_k = micro_batches
    self.every = dict(every or {})
    in_cycle = {name for name, _, _ in self._cycle}
    for name, n in self.every.items():
      check_count(f"Schedule.every['{name}']", n)
      if name not in in_cycle:
        raise UserError(f"Schedule.every names '{name}', which is not an entry of Schedule.cycle")
    if all(self.every.get(name, 1) > 1 for name in in_cycle):
      raise UserError("Schedule.every leaves no entry of Schedule.cycle running in every cycle; leave at least one "
                      "out of it")
    self._build({})

  def with_phase_micro_batches(self, phase_k: Mapping[str, int | None]) -> "Schedule":
    """This schedule with each entry that gives no K taking its phase's own (`phase.micro_batches`)."""
    self._build(phase_k)
    return self

  def _build(self, phase_k: Mapping[str, int | None]) -> None:
    entry = lambda name, updates, k: Entry(name, updates, k or phase_k.get(name) or self._default_k)
    self.warmup = tuple(entry(*e) for e in self._warmup)
    self.period = math.lcm(*self.every.values()) if self.every else 1
    # the cycles of one period, each holding the entries due in it (StyleGAN: a phase runs when cycle % N == 0)
    self.cycle = tuple(entry(*e) for c in range(self.period) for e in self._cycle if c % self.every.get(e[0], 1) == 0)
    self.phases = self.warmup + self.cycle
    # Cumulative update and micro-batch counts at the start of each entry (and one past the end).
    self._update_starts = [0, *itertools.accumulate(p.updates for p in self.phases)]
    self._micro_starts = [0, *itertools.accumulate(p.updates * p.micro_batches for p in self.phases)]
    self.warmup_updates = self._update_starts[len(self.warmup)]
    self._warmup_micro = self._micro_starts[len(self.warmup)]
    self.cycle_updates = self._update_starts[-1] - self.warmup_updates
    self._cycle_micro = self._micro_starts[-1] - self._warmup_micro

  @property
  def names(self) -> list[str]:
    """The phase (or model) names the schedule trains, in order of first appearance."""
    return list(dict.fromkeys(p.name for p in self.phases))

  def _locate(self, update: int) -> tuple[int, int, int]:
    """Returns (periods completed, entry index, update offset inside the entry)."""
    if update < 0:
      raise ValueError(f"update must be >= 0, got {update}")
    cycles = 0
    if update >= self.warmup_updates:
      cycles, update = divmod(update - self.warmup_updates, self.cycle_updates)
      update += self.warmup_updates
    index = bisect.bisect_right(self._update_starts, update) - 1
    return cycles, index, update - self._update_starts[index]

  def position(self, update: int) -> Position:
    """The entry that global update `update` (0-based) belongs to."""
    _, index, offset = self._locate(update)
    phase = self.phases[index]
    return Position(phase, index, phase.updates - offset)

  def cycle_position(self, update: int) -> int:
    """Where update `update`, past the warm-up, falls in its period of cycles (0: the period's first update)."""
    return (update - self.warmup_updates) % self.cycle_updates

  def micro_batches_before(self, update: int) -> int:
    """How many micro-batches the updates before `update` consume in total."""
    cycles, index, offset = self._locate(update)
    return cycles * self._cycle_micro + self._micro_starts[index] + offset * self.phases[index].micro_batches

  def updates_per_phase(self, total_updates: int) -> dict[str, int]:
    """How many of the first `total_updates` updates each phase (or model) gets."""
    counts = dict.fromkeys(self.names, 0)
    update = 0
    while update < total_updates:
      position = self.position(update)
      n = min(position.updates_left, total_updates - update)
      counts[position.phase.name] += n
      update += n
    return counts

  def __repr__(self) -> str:
    every = f", every={self.every}" if self.every else ""
    return f"Schedule(warmup={list(self.warmup)}, cycle={list(self.cycle[:len(self._cycle)])}{every})"
