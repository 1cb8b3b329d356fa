"""The training step: updates of one model, each accumulating K micro-batches and all-reducing once.

For the active model, per update ("window"):
  1. every replica sums the gradients of its K micro-batches locally, with no communication;
  2. the window's gradients and its loss figures are summed over replicas in ONE packed all-reduce;
  3. every replica checks the reduced values are finite and applies them to its own copy of the model with the
     model's own optimizer (trainer.update: clipping, weight decay, the update rule, EMA), in one XLA program;
     a non-finite window is not applied and the loop stops before it.
Other models may be called by the loss (a critic scoring generated samples) but are neither differentiated nor
updated: their weights, optimizer slots and iteration counts stay bit-for-bit the same.
"""

from typing import Any, Callable, Mapping, NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf

from trainer import dropout, update
from trainer.accumulate import accumulate_gradients
from trainer.errors import UserError
from trainer.precision import LossScale
from trainer.strategy import replicas_on_cpu

_ALL_REDUCE_OPS = frozenset({"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce"})


class Span(NamedTuple):
  """What one compiled call did: the updates applied, the figure rows [updates, figures] of each loop that trained
  (in the loop's `figure_names`), and, when it stopped early, the loop and row of the window it did not apply."""

  applied: int
  rows: list[tuple["PhaseLoop", np.ndarray]]
  failed: tuple["PhaseLoop", np.ndarray] | None


LossFn = Callable[[Mapping[str, keras.Model], Any, str], Mapping[str, tf.Tensor]]
"""Maps (all models by name, a per-replica micro-batch, the trained model's name) to {figure: values, shape [b]}.

The figure "loss" is the one differentiated; every figure is reported as its mean over the window's global batch.
"""


def all_reduce_sum(strategy: tf.distribute.Strategy, per_replica: Any) -> Any:
  """Sums a nest of per-replica values over all replicas in one batched (packed) all-reduce."""
  flat = tf.nest.flatten(per_replica)
  reduced = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(v, v) for v in flat])
  return tf.nest.pack_sequence_as(per_replica, reduced)


@gin.configurable(allowlist=["jit_compile", "replica_update"])
class PhaseLoop:
  """A compiled loop of updates of model `name`, K = `micro_batches` micro-batches per update.

  Call it with a distributed iterator and a number of updates `n` (a tensor, so `n` never retraces). It returns
  (figures [m, F] with m <= n + 1, updates applied). The last row is that of a non-finite window that was not
  applied, when the result is shorter than n + 1 rows and fewer than n updates were applied. The figures are the
  loss's, then "grad_norm": the global norm of the reduced window gradient, before clipping.
  """

  def __init__(
      self,
      strategy: tf.distribute.Strategy,
      models: Mapping[str, keras.Model],
      name: str,
      optimizer: keras.optimizers.Optimizer,
      loss_fn: LossFn,
      micro_batches: int,
      global_batch_size: int,
      counters: Mapping[str, tf.Variable],
      loss_scale: LossScale | None = None,
      jit_compile: bool | str = "auto",
      replica_update: bool = True,
  ):
    """`jit_compile` compiles each replica's window (the K forward and backward passes) and its update with XLA;
    "auto" (Keras's default too) does so on GPU and TPU replicas, not on CPU ones, where XLA's code ran slower than
    TensorFlow's kernels for every job measured (README, Performance).
    `replica_update` False applies the reduced gradient with Keras's `apply_gradients` in cross-replica context
    instead (a broadcast from replica 0 on several devices, no clipping), for optimizers trainer.update cannot
    take apart. `loss_scale` (float16 models) scales the loss and skips windows whose gradient overflows."""
    if jit_compile not in (True, False, "auto"):
      raise UserError(f"PhaseLoop.jit_compile = {jit_compile!r}: use True, False or 'auto'")
    if jit_compile == "auto":
      jit_compile = not replicas_on_cpu(strategy)
    self.jit_compile = jit_compile
    (update.check if replica_update else update.check_keras_apply)(name, optimizer)
    update.check_model(name, models[name], jit_compile, micro_batches)
    if loss_scale is not None and not replica_update:
      raise UserError(f"model '{name}' uses mixed_float16, whose loss scaling needs PhaseLoop.replica_update = True")
    self.replica_update = replica_update
    self._loss_scale = loss_scale
    self._tail = ["grad_norm", *(["loss_scale", "skipped"] if loss_scale is not None else [])]
    self.name = name
    self.micro_batches = micro_batches
    self.figure_names: list[str] = []  # set when traced
    self._strategy = strategy
    self.local_devices = len(strategy.extended.worker_devices)
    self._models = models
    self._model = models[name]
    self._optimizer = optimizer
    self._loss_fn = loss_fn
    self.window_examples = global_batch_size * micro_batches
    self._counters = counters
    self._graph = None
    # With one replica in sync the all-reduce is the identity, so the window and the update can be one program.
    self._alone = strategy.num_replicas_in_sync == 1 and replica_update
    placed = lambda fn: _placed(fn, jit_compile)
    self._window_fn, self._update_fn, self._fused_fn = map(placed, (self._window, self._update, self._fused))
    self.loop = tf.function(self._loop)

  def _objective(self, batch):
    with dropout.keyed(batch):  # trainer Dropout masks: keyed by this micro-batch's global example indices
      figures = dict(self._loss_fn(self._models, batch, self.name))
    if "loss" not in figures:
      raise UserError(f"the loss of model '{self.name}' returned {sorted(figures)}; it must return a 'loss' figure")
    # Each per-example figure is divided by the examples in the whole window across all replicas
    # (GLOBAL_BATCH_SIZE * K). Gradients are then summed over the K micro-batches here and over the replicas by the
    # all-reduce, which yields exactly the gradient of the mean loss over the window's global batch.
    sums = {n: tf.reduce_sum(tf.cast(v, tf.float32)) / self.window_examples for n, v in figures.items()}
    self.figure_names = [*sorted(sums), *self._tail]
    value = sums["loss"]
    if self._model.losses:  # regularisation terms count once per update, however the window is split
      value += tf.add_n([tf.cast(x, tf.float32) for x in self._model.losses]) / (
          self._strategy.num_replicas_in_sync * self.micro_batches)
    if self._loss_scale is not None:  # float16: the gradients are unscaled after the all-reduce
      value *= self._loss_scale.scale
    return value, sums

  def _window(self, micro_batches):
    """Replica context: this replica's share of the window gradient and figures. No communication."""
    # The tape watches the tf.Variables that Keras 3 variables wrap.
    variables = [v.value for v in self._model.trainable_variables]
    statistics = update.moving_statistics(self._model)
    before = [tf.identity(v.value) for v in statistics]  # read before the forward passes move them
    grads, figures = accumulate_gradients(self._objective, variables, micro_batches)
    # BatchNorm's moving statistics moved on this replica's micro-batches only; their replica mean travels in the
    # window's one all-reduce, after the gradients, and _update sets it on every replica (trainer.update).
    replicas = self._strategy.num_replicas_in_sync
    return grads + [v.value / replicas for v in statistics], figures, before

  def _update(self, grads, figures, before, live):
    """Replica context: checks the reduced window and, if it is good and `live`, applies it to this replica's own
    copy. `before` holds this replica's BatchNorm statistics as they were before the window's forward passes.

    Returns (status, figures after the loss's): status 0 applied, 1 skipped (a float16 gradient overflow: the
    scale halves; weights, optimizer state and iterations stay as they were), 2 stop before this window (a
    non-finite loss or gradient, or a loss scale below 1), 3 not live (an earlier window of the same straight-line
    cycle stopped the call: this one changes nothing, as if it had not run); the figures are the gradient's
    global norm before clipping (NaN when skipped), and for float16 the scale this window used and whether it
    was skipped.
    """
    grads, statistics = grads[:len(self._model.trainable_variables)], grads[len(self._model.trainable_variables):]
    scale = self._loss_scale.scale.read_value() if self._loss_scale is not None else None
    if scale is not None:
      grads = [g / scale for g in grads]
    norm = tf.linalg.global_norm(grads)
    loss_finite = tf.reduce_all([tf.math.is_finite(f) for f in figures.values()])
    finite = loss_finite & tf.math.is_finite(norm)
    skipped = loss_finite & ~finite
    if scale is None:
      status = tf.where(finite, 0, 2)
    else:
      status = tf.where(finite, 0, tf.where(skipped & (scale >= 2.0), 1, 2))
    status = tf.where(live, status, 3)
    # The window's statistics are kept also when it is skipped (its forward passes ran on good inputs); a window
    # that stops the run leaves them as they were before it, as it leaves the weights, so the last good state
    # saved is that of the update before it.
    update.set_moving_statistics(self._model, [tf.where(status < 2, s, b) for s, b in zip(statistics, before)])
    if self.replica_update:
      def apply():
        update.apply(self._optimizer, update.clip(self._optimizer, grads, norm), self._model.trainable_variables)
        return tf.constant(True)
      tf.cond(finite & live, apply, lambda: tf.constant(False))
    if scale is None:
      return status, tf.stack([norm])
    tf.cond(status < 2, lambda: self._loss_scale.next(finite), lambda: self._loss_scale.scale.read_value())
    return status, tf.stack([tf.where(skipped, float("nan"), norm), scale, tf.cast(skipped, tf.float32)])

  def step(self, iterator, live: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list]:
    """One window, traced into a loop: returns (status, figure row, reduced gradients), the counters (and with
    the per-replica update the optimizer's iterations) already advanced unless the status is 2 (stop) or 3 (not
    `live`, a boolean tensor: the window is computed but changes nothing)."""
    # next() runs outside the replica function, as tf.distribute requires.
    micro_batches = [next(iterator) for _ in range(self.micro_batches)]
    if self._alone:
      grads = None
      status, tail, figures = self._strategy.run(self._fused_fn, args=(micro_batches, live))
    else:
      grads, figures, before = self._strategy.run(self._window_fn, args=(micro_batches,))
      # The window's one collective: gradients and figures summed over replicas in one packed all-reduce.
      grads, figures = all_reduce_sum(self._strategy, (grads, figures))
      # Every replica updates its own copy from its own reduced values; nothing is broadcast from replica 0.
      status, tail = self._strategy.run(self._update_fn, args=(grads, figures, before, live))
    local = lambda v: self._strategy.experimental_local_results(v)[0]
    row = tf.concat([tf.stack([local(figures[n]) for n in self.reduced_figures]), local(tail)], 0)
    # All replicas hold the same reduced values, so they all took the same branch. A skipped window (status 1)
    # counts as an update of the schedule but leaves the optimizer, its iterations and its LR schedule as they were.
    status = local(status)
    counted = tf.cast(status < 2, tf.int64)
    if self.replica_update:
      self._optimizer.iterations.assign_add(tf.cast(status == 0, self._optimizer.iterations.dtype))
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
      if status == 2:
        break
      if not self.replica_update and status == 0:
        self._optimizer.apply_gradients(zip(grads, self._model.trainable_variables))
      applied += 1
    return rows.stack(), applied

  def run(self, iterator, offset: int, n: int) -> Span:
    """Runs `n` updates in one compiled call (`offset`, the position in the phase, changes nothing here)."""
    del offset
    rows, applied = self.loop(iterator, tf.constant(n, tf.int32))
    rows, applied = rows.numpy(), int(applied.numpy())
    return Span(applied, [(self, rows[:applied])] if applied else [], (self, rows[applied]) if applied < n else None)

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
