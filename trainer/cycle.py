"""The schedule's cycle as one compiled program: a call runs updates of every phase in order, across phase
boundaries, so a 1:1 schedule pays one Python round trip per call rather than per update.

A call of n updates from cycle position `offset` loops over the cycles it touches; each cycle is straight-line
code over the cycle's phases (a phase of up to UNROLLED_UPDATES updates unrolled, a longer one as a loop), each
update guarded by whether it is in the call (the first and last cycle may be partial) and no update before it
stopped the run. Straight-line code lets the runtime start an update's input and the forward passes that do not
read the previous update's writes (the generator's own, while the critic's optimizer still runs); one branch
that picks the update's phase would make every update wait for the whole of the one before. The offset and the
count are tensors, so a call may start and end anywhere in the cycle without retracing: one trace per schedule.
Every window is the same traced building block as a PhaseLoop's (`PhaseLoop.step`: K micro-batches, one packed
all-reduce, the model's own update), so a spanning run computes bit-for-bit what per-phase calls compute. The
warm-up prefix, which runs once, stays with the per-phase loops.
"""

import itertools
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from trainer.schedule import Phase
from trainer.step import PhaseLoop, Span, count_collectives

UNROLLED_UPDATES = 4
"""A phase of at most this many updates is unrolled in the cycle's code; a longer one runs as a loop
(consecutive updates of one model cannot overlap anyway: each reads the weights the one before wrote)."""


class _Rows(NamedTuple):
  """What a call has run so far: each window's figure row (of its model's length) and branch, in order, how many
  were applied (status 0 or 1), and whether the run goes on (no window stopped it)."""

  figures: tf.TensorArray
  branches: tf.TensorArray
  applied: tf.Tensor
  ok: tf.Tensor

  def write(self, row: tf.Tensor, branch: int, status: tf.Tensor) -> "_Rows":
    index = self.figures.size()
    return _Rows(self.figures.write(index, row), self.branches.write(index, branch),
                 self.applied + tf.cast(status < 2, tf.int32), status < 2)


class CycleLoop:
  """Call `run(iterator, offset, n)`: `n` updates from cycle position `offset` (0 is the first update of the
  cycle's first phase). Each traced window holds one all-reduce: exactly one per window per model."""

  def __init__(self, cycle: Sequence[Phase], loops: Mapping[tuple[str, int], PhaseLoop]):
    keys = list(dict.fromkeys((p.model, p.micro_batches) for p in cycle))
    self.branches = [loops[key] for key in keys]  # the PhaseLoop of each (model, K); rows name them by index
    starts = itertools.accumulate((p.updates for p in cycle[:-1]), initial=0)
    self._phases = [(loops[p.model, p.micro_batches], keys.index((p.model, p.micro_batches)), start, p.updates)
                    for p, start in zip(cycle, starts)]
    self._length = sum(p.updates for p in cycle)
    self._graph = None
    self._windows = 0  # windows traced into the program, for collectives_per_update
    self.loop = tf.function(self._loop)

  def _loop(self, iterator, offset, num_updates):
    self._graph, self._windows = tf.compat.v1.get_default_graph(), 0
    first = offset % self._length  # the call's updates are positions first .. first + n - 1 of its cycles
    last = first + num_updates
    rows = _Rows(tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None]),
                 tf.TensorArray(tf.int32, size=0, dynamic_size=True), tf.constant(0), tf.constant(True))
    for cycle in tf.range((last + self._length - 1) // self._length):
      for loop, branch, start, updates in self._phases:
        # this phase's updates in the call: lo <= u < hi
        lo = tf.clip_by_value(first - cycle * self._length - start, 0, updates)
        hi = tf.clip_by_value(last - cycle * self._length - start, 0, updates)
        if updates <= UNROLLED_UPDATES:
          for u in range(updates):
            rows = tf.cond(rows.ok & (lo <= u) & (u < hi), lambda: self._window(loop, branch, iterator, rows),
                           lambda: rows)
        else:
          for _ in tf.range(lo, hi):
            if not rows.ok:
              break
            rows = self._window(loop, branch, iterator, rows)
      if not rows.ok:
        break
    return rows.figures.concat(), rows.branches.stack(), rows.applied

  def _window(self, loop: PhaseLoop, branch: int, iterator, rows: "_Rows") -> "_Rows":
    self._windows += 1
    status, row, _ = loop.step(iterator)
    return rows.write(row, branch, status)

  def run(self, iterator, offset: int, n: int) -> Span:
    """Runs `n` updates from cycle position `offset` in one compiled call."""
    flat, branches, applied = self.loop(iterator, tf.constant(offset, tf.int32), tf.constant(n, tf.int32))
    flat, branches, applied = flat.numpy(), branches.numpy(), int(applied.numpy())
    ends = np.cumsum([len(self.branches[b].figure_names) for b in branches], dtype=int)
    rows = [flat[end - len(self.branches[b].figure_names):end] for b, end in zip(branches, ends)]
    trained = [(loop, np.array([row for row, i in zip(rows[:applied], branches) if i == b]))
               for b, loop in enumerate(self.branches)]
    failed = (self.branches[branches[applied]], rows[applied]) if applied < n else None
    return Span(applied, [(loop, r) for loop, r in trained if len(r)], failed)

  def collectives_per_update(self) -> float:
    """All-reduce ops per window per local replica in the traced program: its launches over its windows."""
    return count_collectives(self._graph) / (self._windows * self.branches[0].local_devices)

  @property
  def traces(self) -> int:
    return self.loop.experimental_get_tracing_count()
