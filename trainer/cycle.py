"""The schedule's cycle as one compiled program: a call runs updates of every phase in order, across phase
boundaries, so a 1:1 schedule pays one Python round trip per call rather than per update.

A call of n updates from cycle position `offset` (both tensors, so no call retraces) runs in three parts:
  head   the updates up to the next cycle boundary, one at a time: each picks its phase from its cycle position
         and runs that phase's window in a `tf.switch_case`;
  cycles the whole cycles that follow, as straight-line code over the cycle's phases (a phase of several updates
         is a loop of its own), so an update's input and the work not reading the previous update's writes can
         start before that update ends: a `tf.switch_case` or `tf.cond` around each update would wait for it;
  tail   the updates left, one at a time as in the head.
Every window is the same traced building block as a PhaseLoop's (`PhaseLoop.step`: K micro-batches, one packed
all-reduce, each trained model's own update), so a spanning run computes bit-for-bit what per-phase calls compute.

A non-finite window stops the call before it, wherever it falls: in the head and tail the loop breaks; in a
straight-line cycle the windows after it in the same cycle are computed but not `live` (Status.NOT_LIVE: they
change no weight, slot, statistic or counter) and the loop ends at the cycle's end. A window's function must not have
two call sites in one cycle, where two of its calls could overlap, and a window that accumulates (K > 1) must not
run in a straight-line cycle at all: with wide models TensorFlow 2.21 then fails (AlreadyExistsError) on the
per-step temporaries Grappler adds to the accumulation loop, whether the phase is unrolled or a loop of its own.
So a cycle in which one (phase, K) appears in two entries (as a period of `Schedule.every` has), or whose windows
accumulate, runs every update as the head does. The warm-up prefix, which runs once, stays with the per-phase loops.
"""

import functools
import itertools
from typing import Mapping, Sequence

import tensorflow as tf

from trainer.schedule import Entry
from trainer.step import PhaseLoop, Span, Status, count_collectives, per_launch, span


class CycleLoop:
  """Call `run(iterator, offset, n)`: `n` updates from cycle position `offset` (0 is the first update of the
  cycle's first entry). Entries with the same (phase, K) share one branch and one window function."""

  def __init__(self, cycle: Sequence[Entry], loops: Mapping[tuple[str, int], PhaseLoop]):
    keys = [(p.name, p.micro_batches) for p in cycle]
    unique = list(dict.fromkeys(keys))
    self.branches = [loops[key] for key in unique]
    self._phases = [(p.updates, unique.index(key)) for p, key in zip(cycle, keys)]
    # Whole cycles run straight-line when no (phase, K) is in two entries and no window accumulates (see above).
    self.straight = len(unique) == len(keys) and all(k == 1 for _, k in unique)
    self._starts = tf.constant(list(itertools.accumulate((p.updates for p in cycle[:-1]), initial=0)), tf.int32)
    self._branch_of_phase = tf.constant([unique.index(key) for key in keys], tf.int32)
    self._length = sum(p.updates for p in cycle)
    self._graph = None
    self._windows_traced = 0
    self.loop = tf.function(self._loop)

  def _loop(self, iterator, offset, num_updates):
    self._graph = tf.compat.v1.get_default_graph()
    self._windows_traced = 0
    out = (tf.constant(0), tf.constant(0), tf.TensorArray(tf.float32, size=0, dynamic_size=True),
           tf.TensorArray(tf.int32, size=0, dynamic_size=True))  # rows run, applied, figure rows, their branches
    if not self.straight:
      return self._stack(*self._one_at_a_time(iterator, offset, num_updates, out))
    head = tf.minimum(num_updates, (self._length - offset % self._length) % self._length)
    out = self._one_at_a_time(iterator, offset, head, out)
    cycles = tf.where(out[0] == out[1], (num_updates - head) // self._length, 0)  # 0 once stopped
    out = self._whole_cycles(iterator, cycles, out)
    rest = tf.where(out[0] == out[1], num_updates - out[0], 0)
    return self._stack(*self._one_at_a_time(iterator, offset + out[0], rest, out))

  def _one_at_a_time(self, iterator, offset, n, out):
    """`n` updates from cycle position `offset`, each finding its phase and running its window in a switch."""
    i, applied, rows, branches = out
    for j in tf.range(n):
      phase = tf.searchsorted(self._starts, [(offset + j) % self._length], side="right")[0] - 1
      branch = tf.gather(self._branch_of_phase, phase)
      status, row = tf.switch_case(branch, [functools.partial(self._window, loop, iterator, tf.constant(True))
                                            for loop in self.branches])
      rows, branches = rows.write(i, self._padded(row)), branches.write(i, branch)
      i += 1
      if status == Status.STOP:
        break
      applied += 1
    return i, applied, rows, branches

  def _whole_cycles(self, iterator, cycles, out):
    """`cycles` whole cycles, straight-line over their phases; a stop makes the rest of its cycle not live."""
    i, applied, rows, branches = out
    for _ in tf.range(cycles):
      for updates, branch in self._phases:
        loop = self.branches[branch]
        for _ in tf.range(updates) if updates > 1 else range(1):
          live = tf.equal(i, applied)  # nothing stopped before this update
          status, row = self._window(loop, iterator, live)
          rows, branches = rows.write(i, self._padded(row)), branches.write(i, branch)
          i += 1
          applied += tf.cast(status < Status.STOP, tf.int32)
      if i != applied:
        break
    return i, applied, rows, branches

  def _window(self, loop: PhaseLoop, iterator, live) -> tuple[tf.Tensor, tf.Tensor]:
    self._windows_traced += 1
    status, row, _ = loop.step(iterator, live)
    return status, row

  def _padded(self, row):
    # The branches' rows differ in length (each phase has its own figures): pad them to the longest.
    width = max(len(loop.figure_names) for loop in self.branches)  # known now: every branch was traced
    return tf.reshape(tf.pad(row, [[0, width - tf.size(row)]], constant_values=float("nan")), [width])

  @staticmethod
  def _stack(i, applied, rows, branches):
    del i
    return rows.stack(), branches.stack(), applied

  def run(self, iterator, offset: int, n: int) -> Span:
    """Runs `n` updates from cycle position `offset` in one compiled call."""
    rows, branches, applied = self.loop(iterator, tf.constant(offset, tf.int32), tf.constant(n, tf.int32))
    return span(self.branches, rows.numpy(), branches.numpy(), int(applied.numpy()), n)

  def collectives_per_update(self) -> int | float:
    """All-reduce ops per window per local replica in the traced program: its launches over the traced windows
    (each (phase, K) is traced in the head's and the tail's switch and once in the straight-line cycle)."""
    return per_launch(count_collectives(self._graph), self._windows_traced * self.branches[0].local_devices)

  @property
  def traces(self) -> int:
    return self.loop.experimental_get_tracing_count()
