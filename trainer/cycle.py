"""The schedule's cycle as one compiled program: a call runs updates of every phase in order, across phase
boundaries, so a 1:1 schedule pays one Python round trip per call rather than per update.

Each update picks its phase from its position in the cycle (a tensor), then runs that phase's window with the
same traced building block as a PhaseLoop (`PhaseLoop.step`: K micro-batches, one packed all-reduce, the model's
own update in XLA) inside a `tf.switch_case`. So a call may start and end anywhere in the cycle without retracing,
a spanning run computes bit-for-bit what per-phase calls compute, and the program is traced once per schedule.
The warm-up prefix, which runs once, stays with the per-phase loops.
"""

import functools
import itertools
from typing import Mapping, Sequence

import tensorflow as tf

from trainer.schedule import Phase
from trainer.step import PhaseLoop, Span, count_collectives


class CycleLoop:
  """Call `run(iterator, offset, n)`: `n` updates from cycle position `offset` (0 is the first update of the
  cycle's first phase). Phases with the same (model, K) share one branch, so the program holds one all-reduce
  per (model, K): exactly one per window."""

  def __init__(self, cycle: Sequence[Phase], loops: Mapping[tuple[str, int], PhaseLoop]):
    keys = list(dict.fromkeys((p.model, p.micro_batches) for p in cycle))
    self.branches = [loops[key] for key in keys]
    self._starts = tf.constant(list(itertools.accumulate((p.updates for p in cycle[:-1]), initial=0)), tf.int32)
    self._branch_of_phase = tf.constant([keys.index((p.model, p.micro_batches)) for p in cycle], tf.int32)
    self._length = sum(p.updates for p in cycle)
    self._graph = None
    self.loop = tf.function(self._loop)

  def _loop(self, iterator, offset, num_updates):
    self._graph = tf.compat.v1.get_default_graph()
    rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
    branches = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
    applied = tf.constant(0)
    for i in tf.range(num_updates):
      phase = tf.searchsorted(self._starts, [(offset + i) % self._length], side="right")[0] - 1
      branch = tf.gather(self._branch_of_phase, phase)
      status, row = tf.switch_case(branch, [functools.partial(_window, loop, iterator) for loop in self.branches])
      # The branches' rows differ in length (each model has its own figures): pad them to the longest.
      width = max(len(loop.figure_names) for loop in self.branches)  # known now: switch_case traced them all
      row = tf.reshape(tf.pad(row, [[0, width - tf.size(row)]], constant_values=float("nan")), [width])
      rows, branches = rows.write(i, row), branches.write(i, branch)
      if status == 2:
        break
      applied += 1
    return rows.stack(), branches.stack(), applied

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

  def collectives_per_update(self) -> int:
    """All-reduce ops per window per local replica in the traced program: its launches over the branches."""
    return count_collectives(self._graph) // (len(self.branches) * self.branches[0].local_devices)

  @property
  def traces(self) -> int:
    return self.loop.experimental_get_tracing_count()


def _window(loop: PhaseLoop, iterator) -> tuple[tf.Tensor, tf.Tensor]:
  status, row, _ = loop.step(iterator)
  return status, row
