"""The schedule's cycle as one compiled program: a call runs updates of every phase in order, across phase
boundaries, so a 1:1 schedule pays one Python round trip per call rather than per update.

A call of n updates from cycle position `offset` runs in three parts, all in one program traced once per schedule:
  head   the updates up to the next cycle start, one by one: each picks its phase from its position (a tensor) and
         runs that phase's window in a `tf.switch_case` (phases with the same (model, K) share a branch);
  cycles the whole cycles that follow, each as straight-line code over the cycle's phases, so the runtime may
         start an update's input and the forward passes that do not read the previous update's writes (a
         generator's, while the critic's optimizer runs) before the previous update ends; a branch per update
         would make every update wait for the whole of the one before it;
  tail   what is left (less than a cycle), one by one again from position 0.
Every window is the same traced building block as a PhaseLoop's (`PhaseLoop.step`: K micro-batches, one packed
all-reduce, the model's own update), so a spanning run computes bit-for-bit what per-phase calls compute. In the
straight-line cycles a window after one that stops the run is computed but not `live`: it changes nothing (its
status is 3), and the call ends after that cycle. The warm-up prefix, which runs once, stays with the per-phase
loops.
"""

import functools
import itertools
from typing import Mapping, NamedTuple, Sequence

import tensorflow as tf

from trainer.schedule import Phase
from trainer.step import PhaseLoop, Span, count_collectives

UNROLLED_UPDATES = 4
"""A phase of at most this many updates is unrolled in the straight-line cycle; a longer one runs as a loop
(consecutive updates of one model cannot overlap, each reads the weights the one before wrote)."""


class _Rows(NamedTuple):
  """What a call has run so far: each window's figure row (padded to the longest branch's: each model has its
  own figures) and branch, in order, and how many of them were applied (status 0 or 1)."""

  figures: tf.TensorArray
  branches: tf.TensorArray
  applied: tf.Tensor

  def write(self, row: tf.Tensor, branch, status: tf.Tensor, width: int) -> "_Rows":
    # (a switch's row has no static length: its branches' differ)
    row = tf.reshape(tf.pad(row, [[0, width - tf.size(row)]], constant_values=float("nan")), [width])
    index = self.figures.size()
    return _Rows(self.figures.write(index, row), self.branches.write(index, branch),
                 self.applied + tf.cast(status < 2, tf.int32))


class CycleLoop:
  """Call `run(iterator, offset, n)`: `n` updates from cycle position `offset` (0 is the first update of the
  cycle's first phase). Each traced window holds one all-reduce: exactly one per window per model."""

  def __init__(self, cycle: Sequence[Phase], loops: Mapping[tuple[str, int], PhaseLoop]):
    keys = list(dict.fromkeys((p.model, p.micro_batches) for p in cycle))
    self.branches = [loops[key] for key in keys]
    self._phases = [(keys.index((p.model, p.micro_batches)), p.updates) for p in cycle]
    self._starts = tf.constant(list(itertools.accumulate((p.updates for p in cycle[:-1]), initial=0)), tf.int32)
    self._branch_of_phase = tf.constant([branch for branch, _ in self._phases], tf.int32)
    self._length = sum(p.updates for p in cycle)
    self._graph = None
    self._windows = 0  # windows traced into the program, for collectives_per_update
    self.loop = tf.function(self._loop)

  def _loop(self, iterator, offset, num_updates):
    self._graph, self._windows = tf.compat.v1.get_default_graph(), 0
    length = self._length
    head = tf.minimum(num_updates, (length - offset % length) % length)
    cycles = (num_updates - head) // length
    rows = _Rows(tf.TensorArray(tf.float32, size=0, dynamic_size=True),
                 tf.TensorArray(tf.int32, size=0, dynamic_size=True), tf.constant(0))
    rows, ok = self._one_by_one(iterator, offset, head, rows)  # traced first: it traces every branch
    if ok:
      rows, ok = self._whole_cycles(iterator, cycles, rows)
    if ok:
      rows, ok = self._one_by_one(iterator, 0, num_updates - head - cycles * length, rows)
    return rows.figures.stack(), rows.branches.stack(), rows.applied

  def _one_by_one(self, iterator, offset, n, rows):
    """`n` updates from cycle position `offset`, each in a switch over the branches; stops at a status 2."""
    ok = tf.constant(True)
    for i in tf.range(n):
      phase = tf.searchsorted(self._starts, [(offset + i) % self._length], side="right")[0] - 1
      branch = tf.gather(self._branch_of_phase, phase)
      status, row = tf.switch_case(branch, [functools.partial(self._window, loop, iterator) for loop in self.branches])
      rows, ok = rows.write(row, branch, status, self._width()), status < 2
      if not ok:
        break
    return rows, ok

  def _whole_cycles(self, iterator, cycles, rows):
    """`cycles` whole cycles, each straight-line over its phases; ends after the cycle in which a window stopped."""
    ok = tf.constant(True)
    for _ in tf.range(cycles):
      for branch, updates in self._phases:
        if updates <= UNROLLED_UPDATES:
          for _ in range(updates):
            status, row = self._window(self.branches[branch], iterator, live=ok)
            rows, ok = rows.write(row, branch, status, self._width()), ok & (status < 2)
        else:
          rows, ok = self._phase(iterator, branch, updates, rows, ok)
      if not ok:
        break
    return rows, ok

  def _phase(self, iterator, branch, updates, rows, ok):
    """A long phase of the straight-line cycle as a loop of its updates (none runs after a stop)."""
    for _ in tf.range(updates):
      if not ok:
        break
      status, row = self._window(self.branches[branch], iterator)
      rows, ok = rows.write(row, branch, status, self._width()), status < 2
    return rows, ok

  def _window(self, loop: PhaseLoop, iterator, live=None) -> tuple[tf.Tensor, tf.Tensor]:
    self._windows += 1
    status, row, _ = loop.step(iterator, live)
    return status, row

  def _width(self) -> int:
    return max(len(loop.figure_names) for loop in self.branches)  # known once the head's switch traced them all

  def run(self, iterator, offset: int, n: int) -> Span:
    """Runs `n` updates from cycle position `offset` in one compiled call."""
    rows, branches, applied = self.loop(iterator, tf.constant(offset, tf.int32), tf.constant(n, tf.int32))
    rows, branches, applied = rows.numpy(), branches.numpy(), int(applied.numpy())
    trained = [(loop, rows[:applied][branches[:applied] == b, :len(loop.figure_names)])
               for b, loop in enumerate(self.branches)]
    failed = None
    if applied < n:
      loop = self.branches[branches[applied]]
      failed = (loop, rows[applied, :len(loop.figure_names)])
    return Span(applied, [(loop, r) for loop, r in trained if len(r)], failed)

  def collectives_per_update(self) -> float:
    """All-reduce ops per window per local replica in the traced program: its launches over its windows."""
    return count_collectives(self._graph) / (self._windows * self.branches[0].local_devices)

  @property
  def traces(self) -> int:
    return self.loop.experimental_get_tracing_count()
