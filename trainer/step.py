"""The training step: updates of one phase, each accumulating K micro-batches and all-reducing once.

For the phase's trained models, per update ("window"):
  1. every replica sums the gradients of its K micro-batches locally, with no communication (`_window`);
  2. the window's gradients (every trained model's), its figures and its BatchNorm statistics are summed over
     replicas in ONE packed all-reduce (`all_reduce_sum`);
  3. every replica checks the reduced values are finite and applies them to its own copy of each trained model
     with that model's own optimizer (trainer.update: clipping, weight decay, the update rule, EMA), in one XLA
     program (`_update`); a non-finite window is not applied and the loop stops before it.
Other models may be called by the loss (a critic scoring generated samples) but are neither differentiated nor
updated: their weights, optimizer slots, iteration counts and BatchNorm statistics stay bit-for-bit the same
(a loss that calls one with training=True moves its statistics only inside the window; they are put back).
"""

import enum
from typing import Any, Callable, Mapping, NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf

from trainer import dropout, update
from trainer.accumulate import accumulate_gradients
from trainer.errors import UserError
from trainer.phase import LossFn, Phase  # noqa: F401  (LossFn: part of the step's interface)
from trainer.state import State
from trainer.strategy import replicas_on_cpu

_ALL_REDUCE_OPS = frozenset({"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce"})


class Status(enum.IntEnum):
  """What a window did."""

  APPLIED = 0   # its update was applied
  SKIPPED = 1   # a float16 gradient overflow: not applied, the loss scale halves; training goes on
  DROPPED = 2   # non-finite under train.on_nonfinite = 'skip': not applied, nothing moves; training goes on
  STOP = 3      # a non-finite loss or gradient (or a loss scale below 1): not applied, the call stops before it
  NOT_LIVE = 4  # an earlier window of the same straight-line cycle stopped: computed, changes nothing


class Span(NamedTuple):
  """What one compiled call did: the updates applied, their figures ("phase/figure" -> one value per applied
  update, NaN where an update's phase has no such figure), the examples they consumed, and, when it stopped
  early, the phase and figures of the window it did not apply."""

  applied: int
  figures: dict[str, np.ndarray]
  examples: int
  failed: tuple[str, dict[str, float]] | None


def all_reduce_sum(strategy: tf.distribute.Strategy, per_replica: Any) -> Any:
  """Sums a nest of per-replica values over all replicas in one batched (packed) all-reduce."""
  flat = tf.nest.flatten(per_replica)
  reduced = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(v, v) for v in flat])
  return tf.nest.pack_sequence_as(per_replica, reduced)


@gin.configurable(allowlist=["jit_compile", "replica_update"])
class PhaseLoop:
  """A compiled loop of updates of `phase`, K = `micro_batches` micro-batches per update.

  Call `run(iterator, offset, n)`. Its figures are the loss's, then the reduced gradient's global norm before
  clipping ("grad_norm"; "grad_norm/<model>" per model of a phase that trains several), then for float16 the loss
  scale the window used and whether it was skipped.
  """

  def __init__(self, strategy: tf.distribute.Strategy, state: State, phase: Phase, micro_batches: int,
               global_batch_size: int, jit_compile: bool | str = "auto", replica_update: bool = True,
               skip_nonfinite: bool = False):
    """`jit_compile` compiles each replica's window (the K forward and backward passes) and its update with XLA;
    "auto" (Keras's default too) does so on GPU and TPU replicas, not on CPU ones, where XLA's code ran slower than
    TensorFlow's kernels for every job measured (docs/performance.md).
    `replica_update` False applies the reduced gradient with Keras's `apply_gradients` in cross-replica context
    instead (a broadcast from replica 0 on several devices, no clipping), for optimizers trainer.update cannot
    take apart. A phase with float16 models scales its loss by the smallest of their loss scales and skips
    windows whose gradient overflows (trainer.precision). `skip_nonfinite` drops a non-finite window instead of
    stopping before it (trainer.divergence)."""
    if jit_compile not in (True, False, "auto"):
      raise UserError(f"PhaseLoop.jit_compile = {jit_compile!r}: use True, False or 'auto'")
    if jit_compile == "auto":
      jit_compile = not replicas_on_cpu(strategy)
    self.jit_compile = jit_compile
    self.phase, self.name, self.trains = phase, phase.name, phase.models
    self._models = state.models
    self._optimizers = [state.optimizers[m] for m in self.trains]
    self._variables = [state.models[m].trainable_variables for m in self.trains]
    for model, optimizer in zip(self.trains, self._optimizers):
      (update.check if replica_update else update.check_keras_apply)(model, optimizer)
      update.check_model(model, state.models[model], jit_compile, micro_batches)
    self._loss_scales = [state.loss_scales[m] for m in self.trains if m in state.loss_scales]
    if self._loss_scales and not replica_update:
      raise UserError(f"phase '{self.name}' trains a mixed_float16 model, whose loss scaling needs "
                      "PhaseLoop.replica_update = False to be left at True")
    self.replica_update = replica_update
    norms = ["grad_norm"] if not phase.joint else [f"grad_norm/{m}" for m in self.trains]
    self._skip_nonfinite = skip_nonfinite
    self._tail = [*norms, *(["loss_scale", "skipped"] if self._loss_scales else []),
                  *(["nonfinite_skipped"] if skip_nonfinite else [])]
    self._loss_keys = ["loss"]  # or "loss/<model>" per trained model: set when traced
    self.micro_batches = micro_batches
    self.figure_names: list[str] = []  # set when traced
    self._strategy = strategy
    self.local_devices = len(strategy.extended.worker_devices)
    self._counters = state.counters
    self.window_examples = global_batch_size * micro_batches
    self._graph = None
    # With one replica in sync the all-reduce is the identity, so the window and the update can be one program.
    self._alone = strategy.num_replicas_in_sync == 1 and replica_update
    placed = lambda fn: _placed(fn, jit_compile)
    self._window_fn, self._update_fn, self._fused_fn = map(placed, (self._window, self._update, self._fused))
    self.loop = tf.function(self._loop)

  def _scale(self) -> tf.Tensor | None:
    """The phase's float16 loss scale: the smallest of its float16 models' scales, so that none overflows."""
    if not self._loss_scales:
      return None
    return tf.reduce_min([s.scale.read_value() for s in self._loss_scales])

  def _objective(self, batch):
    with dropout.keyed(batch):  # trainer Dropout masks: keyed by this micro-batch's global example indices
      figures = dict(self.phase.loss(self._models, batch, self.phase.target))
    per_model = [f"loss/{m}" for m in self.trains]
    if "loss" in figures:
      self._loss_keys = ["loss"] * len(self.trains)
    elif self.phase.joint and all(k in figures for k in per_model):
      self._loss_keys = per_model
    else:
      wanted = "'loss'" + (f", or one loss per model ({', '.join(map(repr, per_model))})" if self.phase.joint else "")
      raise UserError(f"the loss of phase '{self.name}' returned {sorted(figures)}; it must return {wanted}")
    # Each per-example figure is divided by the examples in the whole window across all replicas
    # (GLOBAL_BATCH_SIZE * K). Gradients are then summed over the K micro-batches here and over the replicas by the
    # all-reduce, which yields exactly the gradient of the mean loss over the window's global batch.
    sums = {n: tf.reduce_sum(tf.cast(v, tf.float32)) / self.window_examples for n, v in figures.items()}
    self.figure_names = [*sorted(sums), *self._tail]
    # regularisation terms count once per update, however the window is split
    share = self._strategy.num_replicas_in_sync * self.micro_batches
    regularisation = [tf.add_n([tf.cast(x, tf.float32) for x in self._models[m].losses]) / share
                      if self._models[m].losses else None for m in self.trains]
    values = {}
    scale = self._scale()
    for key in dict.fromkeys(self._loss_keys):  # one value per distinct loss, so a joint loss is one tensor
      own = [r for k, r in zip(self._loss_keys, regularisation) if k == key and r is not None]
      values[key] = sums[key] + tf.add_n(own) if own else sums[key]
      if scale is not None:  # float16: the gradients are unscaled after the all-reduce
        values[key] *= scale
    return [values[k] for k in self._loss_keys], sums

  def _unreached(self, i: int) -> None:
    raise UserError(f"phase '{self.name}' trains model '{self.trains[i]}', but its loss never calls it (no gradient "
                    f"reaches it); call it in the loss or drop it from {self.name}/phase.trains")

  def _window(self, micro_batches):
    """Replica context: this replica's share of the window gradient, figures and BatchNorm statistics (the
    trained models'), and those statistics as they were before. No communication."""
    # The tape watches the tf.Variables that Keras 3 variables wrap.
    groups = [[v.value for v in variables] for variables in self._variables]
    trained = [v for m in self.trains for v in update.moving_statistics(self._models[m])]
    others = [v for m in self._models if m not in self.trains for v in update.moving_statistics(self._models[m])]
    before, others_before = ([tf.identity(v.value) for v in vs] for vs in (trained, others))
    grads, figures = accumulate_gradients(self._objective, groups, micro_batches, self._unreached)
    for v, value in zip(others, others_before):  # a model the phase does not train keeps its statistics
      v.assign(value)
    # The trained models' statistics moved on this replica's micro-batches only; their replica mean travels in the
    # window's one all-reduce, after the gradients, and _update sets it on every replica (trainer.update).
    replicas = self._strategy.num_replicas_in_sync
    return grads + [v.value / replicas for v in trained], figures, before

  def _update(self, reduced, figures, before, live):
    """Replica context: checks the reduced window and, if it is good and `live`, applies it to this replica's own
    copy of each trained model. `before` holds the trained models' BatchNorm statistics as they were before the
    window's forward passes. Returns (Status, the figures after the loss's)."""
    sizes = [len(v) for v in self._variables]
    grads = [reduced[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
    statistics = reduced[sum(sizes):]
    scale = self._scale()
    if scale is not None:
      grads = [[g / scale for g in group] for group in grads]
    norms = [tf.linalg.global_norm(group) for group in grads]
    status, finite, skipped = decide(list(figures.values()), norms, scale, live, self._skip_nonfinite)
    # The window's statistics are kept also when it is skipped (its forward passes ran on good inputs); a window
    # that stops the run leaves them as they were before it, as it leaves the weights, so the last good state
    # saved is that of the update before it.
    kept = [tf.where(status <= Status.SKIPPED, s, b) for s, b in zip(statistics, before)]
    for m in self.trains:
      n = len(update.moving_statistics(self._models[m]))
      update.set_moving_statistics(self._models[m], kept[:n])
      kept = kept[n:]
    if self.replica_update:
      def apply():
        for optimizer, group, norm, variables in zip(self._optimizers, grads, norms, self._variables):
          update.apply(optimizer, update.clip(optimizer, group, norm), variables)  # each model's own optimizer
        return tf.constant(True)
      tf.cond(finite & live, apply, lambda: tf.constant(False))
    dropped = [tf.cast(status == Status.DROPPED, tf.float32)] if self._skip_nonfinite else []
    if scale is None:
      return status, tf.stack([*norms, *dropped])
    for loss_scale in self._loss_scales:
      tf.cond(status <= Status.SKIPPED, lambda s=loss_scale: s.next(finite),
              lambda s=loss_scale: s.scale.read_value())
    shown = [tf.where(skipped, float("nan"), n) for n in norms]
    return status, tf.stack([*shown, scale, tf.cast(skipped, tf.float32), *dropped])

  def step(self, iterator, live: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list]:
    """One window, traced into a loop: returns (Status, figure row in `figure_names` order, reduced gradients),
    the counters (and with the per-replica update the optimizers' iterations) already advanced unless the status
    is STOP or NOT_LIVE (`live`, a boolean tensor, False: the window is computed but changes nothing)."""
    # next() runs outside the replica function, as tf.distribute requires.
    micro_batches = [next(iterator) for _ in range(self.micro_batches)]
    if self._alone:
      grads = None
      status, tail, figures = self._strategy.run(self._fused_fn, args=(micro_batches, live))
    else:
      grads, figures, before = self._strategy.run(self._window_fn, args=(micro_batches,))
      # The window's one collective: every trained model's gradients, the figures and the trained models'
      # BatchNorm statistics, summed over replicas in one packed all-reduce.
      grads, figures = all_reduce_sum(self._strategy, (grads, figures))
      # Every replica updates its own copy from its own reduced values; nothing is broadcast from replica 0.
      status, tail = self._strategy.run(self._update_fn, args=(grads, figures, before, live))
    local = lambda v: self._strategy.experimental_local_results(v)[0]
    row = tf.concat([tf.stack([local(figures[n]) for n in self.reduced_figures]), local(tail)], 0)
    # All replicas hold the same reduced values, so they all took the same branch. A skipped window counts as an
    # update of the schedule but leaves the optimizers, their iterations and their LR schedules as they were.
    status = local(status)
    counted = tf.cast(status < Status.STOP, tf.int64)
    if self.replica_update:
      for optimizer in self._optimizers:
        optimizer.iterations.assign_add(tf.cast(status == Status.APPLIED, optimizer.iterations.dtype))
    self._counters["update"].assign_add(counted)
    self._counters["micro_batch"].assign_add(counted * self.micro_batches)
    return status, row, grads

  def _fused(self, micro_batches, live):
    grads, figures, before = self._window(micro_batches)
    return (*self._update(grads, figures, before, live), figures)

  def _loop(self, iterator, num_updates):
    self._graph = tf.compat.v1.get_default_graph()  # the FuncGraph being traced, for collectives_per_update
    rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
    applied = tf.constant(0)
    for i in tf.range(num_updates):
      status, row, grads = self.step(iterator, tf.constant(True))
      rows = rows.write(i, row)
      if status == Status.STOP:
        break
      if not self.replica_update and status == Status.APPLIED:
        self._keras_apply(grads)
      applied += 1
    return rows.stack(), applied

  def _keras_apply(self, grads) -> None:
    for optimizer, variables in zip(self._optimizers, self._variables):
      optimizer.apply_gradients(zip(grads[:len(variables)], variables))
      grads = grads[len(variables):]

  def run(self, iterator, offset: int, n: int) -> Span:
    """Runs `n` updates in one compiled call (`offset`, the position in the phase, changes nothing here)."""
    del offset
    rows, applied = self.loop(iterator, tf.constant(n, tf.int32))
    return span([self], rows.numpy(), np.zeros(len(rows), np.int32), int(applied.numpy()), n)

  def figures(self, row: np.ndarray) -> dict[str, float]:
    """A figure row as {"phase/figure": value}."""
    return {f"{self.name}/{k}": float(v) for k, v in zip(self.figure_names, row)}

  def collectives_per_update(self) -> int | float:
    """All-reduce ops per update per local replica, counted in the traced graph (the design says exactly 1)."""
    return per_launch(count_collectives(self._graph), self.local_devices)

  @property
  def reduced_figures(self) -> list[str]:
    """The loss's figures, all-reduced with the gradients (the figures after them are computed per replica from
    the reduced values). Known once traced."""
    return self.figure_names[:-len(self._tail)]

  @property
  def traces(self) -> int:
    """How many times the loop has been traced (1 after its first call, and it should stay 1)."""
    return self.loop.experimental_get_tracing_count()


def decide(figures: list[tf.Tensor], norms: list[tf.Tensor], scale: tf.Tensor | None, live: tf.Tensor,
           drop: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """A window's Status from its reduced figures and per-model gradient norms (the same on every replica, so every
  replica decides alike), and whether it is finite and was skipped: with a float16 `scale`, a finite loss whose
  gradient overflows is skipped while the scale can halve; anything else non-finite stops the call, or with
  `drop` (train.on_nonfinite = 'skip') is dropped."""
  loss_finite = tf.reduce_all([tf.math.is_finite(f) for f in figures])
  finite = loss_finite & (tf.math.is_finite(norms[0]) if len(norms) == 1 else
                         tf.reduce_all([tf.math.is_finite(n) for n in norms]))
  skipped = loss_finite & ~finite
  status = tf.where(finite, Status.APPLIED, Status.STOP)
  if scale is not None:
    status = tf.where(skipped & (scale >= 2.0), Status.SKIPPED, status)
  if drop:
    status = tf.where(status == Status.STOP, Status.DROPPED, status)
  return tf.where(live, status, Status.NOT_LIVE), finite, skipped


def span(loops: list[PhaseLoop], rows: np.ndarray, branches: np.ndarray, applied: int, n: int) -> Span:
  """A compiled call's result as a Span: `rows` [updates run, figures] padded to the widest loop's, `branches`
  the index in `loops` of each row's loop."""
  figures: dict[str, np.ndarray] = {}
  examples = 0
  for b, loop in enumerate(loops):
    mine = branches[:applied] == b
    if not mine.any():
      continue
    examples += int(mine.sum()) * loop.window_examples
    for j, name in enumerate(loop.figure_names):
      values = figures.setdefault(f"{loop.name}/{name}", np.full(applied, np.nan))
      values[mine] = rows[:applied][mine, j]
  failed = None
  if applied < n:
    loop = loops[branches[applied]]
    failed = (loop.name, loop.figures(rows[applied, :len(loop.figure_names)]))
  return Span(applied, figures, examples, failed)


def count_collectives(graph: tf.Graph) -> int:
  """All-reduce launches in a traced graph and the functions it calls (one per local device per all-reduce)."""
  graph = graph.as_graph_def()
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  return sum(n.op in _ALL_REDUCE_OPS for n in nodes)


def per_launch(count: int, launches: int) -> int | float:
  """`count` ops over `launches`: an int when it divides exactly, else the fraction, so that a stray all-reduce in
  one traced window shows (1.33) rather than being rounded away."""
  return count // launches if count % launches == 0 else count / launches


def _placed(fn: Callable, jit_compile: bool) -> Callable:
  """`fn` as a function of its own (with `jit_compile`, an XLA program), its results placed on the replica's device
  by identity(): a called function's outputs carry no device, and the all-reduce and the loop take their devices
  from them. Without XLA the runtime inlines the call; the traced graph keeps it, for tests/graphs.py to walk."""
  compiled = tf.function(fn, jit_compile=jit_compile)
  return lambda *args: tf.nest.map_structure(tf.identity, compiled(*args))
