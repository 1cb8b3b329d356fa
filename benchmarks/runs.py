"""The benchmark's job, and the four ways of training it that `python -m benchmarks` times side by side.

The job: the non-saturating GAN of the ring config (trainer.tasks.gan, trainer.tasks.ring) with a generator and a
critic of `depth` hidden layers of `width` units, critic 2 : generator 1, every update accumulating K micro-batches of G
examples (G summed over replicas). Each way runs `warmup_cycles` untimed cycles (tracing, first allocations) and
then `timed_cycles` timed ones, and returns the same figures. In every row an "update" is K micro-batches, i.e.
G * K examples, also for the naive loop, which applies an optimizer step per micro-batch.

  trainer        `trainer.train.train` itself, as users run it (see `run_trainer`)
  keras_fit      `Model.fit` with a custom `train_step` doing the cycle and the accumulation (keras.io WGAN-GP style)
  naive          a Python loop calling a compiled step per micro-batch; Keras all-reduces and applies every time
  compute_bound  the same forward and backward passes and optimizer updates in one tf.function on one device, on
                 in-memory data: no strategy, no accumulation variables, no collectives, no input pipeline
  mwms_bound     trainer's own compiled program (the cycle's CycleLoop: per update an XLA window, one all-reduce,
                 an XLA update) on the workers, fed micro-batches held in memory: the limit of the multi-worker
                 trainer row
"""

import dataclasses
import functools
import tempfile
import time
from typing import Callable

import gin
import keras
import tensorflow as tf

from trainer import data, train
from trainer.tasks import gan, models, ring
from trainer.accumulate import accumulate_gradients
from trainer.schedule import Schedule
from trainer.cycle import CycleLoop
from trainer.phase import Phase
from trainer.step import PhaseLoop

LOSSES = {"critic": gan.ns_critic_loss, "generator": gan.ns_generator_loss}
LATENT_DIM = 2  # ring.ring_examples' default latent size


@dataclasses.dataclass(frozen=True)
class Job:
  """Sizes of the benchmark job and how long each way of running it is timed."""

  width: int = 512
  depth: int = 3
  global_batch_size: int = 256  # G: examples per micro-batch, summed over replicas
  micro_batches: int = 8  # K: micro-batches per update
  critic_updates: int = 2
  generator_updates: int = 1
  warmup_cycles: int = 4  # also keras_fit's steps_per_execution (in cycles)
  timed_cycles: int = 8  # a multiple of warmup_cycles
  learning_rate: float = 1e-4

  @property
  def cycle(self) -> list[str]:
    """The model trained by each update of one cycle."""
    return ["critic"] * self.critic_updates + ["generator"] * self.generator_updates

  @property
  def update_examples(self) -> int:
    return self.global_batch_size * self.micro_batches


# The default job's sizes (configs/gan_digits.gin: MLPs 2 x 256, G=64, K=1, critic 1 : generator 1): updates so
# short that what the outer loop costs per update decides the speed.
SMALL = Job(width=256, depth=2, global_batch_size=64, micro_batches=1, critic_updates=1, generator_updates=1,
            warmup_cycles=20, timed_cycles=1000)
JOBS = {"big": Job(), "small": SMALL}
QUICK = Job(width=128, global_batch_size=64, micro_batches=2, warmup_cycles=5, timed_cycles=20)
QUICK_JOBS = {"big": QUICK, "small": dataclasses.replace(SMALL, width=64, warmup_cycles=5, timed_cycles=20)}


def _mlps(job: Job) -> dict[str, Callable[[], keras.Model]]:
  hidden = (job.width,) * job.depth
  return {"generator": functools.partial(models.mlp, LATENT_DIM, 2, hidden, name="generator"),
          "critic": functools.partial(models.mlp, 2, 1, hidden, name="critic")}


def _adam(job: Job) -> keras.optimizers.Optimizer:
  return keras.optimizers.Adam(job.learning_rate, beta_1=0.5, beta_2=0.9)


def _build(job: Job, strategy: tf.distribute.Strategy):
  """The two models and their optimizers (slots built), under `strategy`, exactly as trainer.train builds them."""
  state = train.build(strategy, _mlps(job), {name: functools.partial(_adam, job) for name in LOSSES}, 0)
  return state.models, state.optimizers


def _schedule(job: Job) -> Schedule:
  return Schedule(cycle=[("critic", job.critic_updates, job.micro_batches),
                         ("generator", job.generator_updates, job.micro_batches)])


def _figures(job: Job, updates: int, seconds: float) -> dict:
  return {"examples_per_sec": updates * job.update_examples / seconds, "ms_per_update": 1e3 * seconds / updates,
          "timed_updates": updates}


def _timed(job: Job, run_cycles: Callable[[int], None]) -> dict:
  """Runs the warm-up, then times `timed_cycles` cycles; `run_cycles(n)` returns when its work is done."""
  run_cycles(job.warmup_cycles)
  start = time.perf_counter()
  run_cycles(job.timed_cycles)
  return _figures(job, job.timed_cycles * len(job.cycle), time.perf_counter() - start)


def _window_loss(job: Job, nets, name: str, batch) -> tf.Tensor:
  """sum(per-example loss) / (G * K): summed over micro-batches and replicas, the window's mean loss."""
  return tf.reduce_sum(LOSSES[name](nets, batch, name)["loss"]) / job.update_examples


def _summed_gradients(job: Job, nets, name: str, micro_batches) -> tuple[list[tf.Tensor], tf.Tensor]:
  """The window's gradient and loss as such code is usually written: a Python loop over the K micro-batches."""
  variables = nets[name].trainable_variables
  grads, loss = None, 0.0
  for batch in micro_batches:
    with tf.GradientTape() as tape:
      value = _window_loss(job, nets, name, batch)
    step = tape.gradient(value, variables)
    grads, loss = (step if grads is None else [a + b for a, b in zip(grads, step)]), loss + value
  return grads, loss


def run_trainer(job: Job, strategy: tf.distribute.Strategy, jit_compile: bool | None = None,
                span_phases: bool = True) -> dict:
  """`trainer.train.train` itself, timed by its own telemetry.

  It trains 2 * T updates with `log_every` = T (T = the timed updates): the first log interval is the warm-up
  (set-up and tracing), the last one is timed, and its examples/s is what the run itself reports (`Run.last_log`,
  on every worker). The only checkpoint is written after that interval closed and there is no evaluation, so
  neither is measured; what is measured is the whole outer loop users run (loop cuts at phase boundaries, the
  figures read back after every call, telemetry), not only the compiled step. `jit_compile` overrides
  PhaseLoop's default through gin, as a user would (the gin config is cleared afterwards); `span_phases` False
  cuts every call at a phase boundary (trainer before trainer.cycle).
  """
  timed = job.timed_cycles * len(job.cycle)
  schedule = _schedule(job)
  optimizers = {name: functools.partial(_adam, job) for name in LOSSES}
  if jit_compile is not None:
    gin.bind_parameter("PhaseLoop.jit_compile", jit_compile)
  try:
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as model_dir:
      run = train.train(model_dir, strategy, models=_mlps(job), optimizers=optimizers, losses=LOSSES,
                        examples=ring.ring_examples, schedule=schedule, train_steps=2 * timed,
                        global_batch_size=job.global_batch_size, log_every=timed, checkpoint_every=2 * timed,
                        span_phases=span_phases)
  finally:
    if jit_compile is not None:
      gin.clear_config()
  seconds = timed * job.update_examples / run.last_log["examples_per_sec"]
  loops = {name: loop for (name, _), loop in run.loops.items()}
  # float32 gradients and the loss's figures, the window's one all-reduce
  packed = {name: 4 * (sum(v.shape.num_elements() for v in run.models[name].trainable_variables)
                       + len(loop.reduced_figures)) for name, loop in loops.items()}
  cycle_examples = len(job.cycle) * job.update_examples
  collectives = {name: (run.cycle or loop).collectives_per_update() for name, loop in loops.items()}
  return {**_figures(job, timed, seconds), "collectives_per_window": collectives,
          "allreduce_bytes_per_example": sum(packed[name] for name in job.cycle) / cycle_examples}


class _CycleGAN(keras.Model):
  """The keras.io WGAN-GP pattern: one train_step runs a whole cycle, critic updates then the generator's.

  Each update sums the gradients of its K micro-batches (a Python loop, as such code is usually written), then
  calls the model's optimizer, which in replica context all-reduces the gradients and applies them.
  """

  def __init__(self, job: Job, nets, optimizers, replicas: int):
    super().__init__(name="cycle_gan")
    self.job, self.nets, self.optimizers_, self.replicas = job, nets, optimizers, replicas
    self.built = True  # the two networks are built; this wrapper has no call() to build it from

  def train_step(self, data_):
    job = self.job
    per_replica = job.global_batch_size // self.replicas
    # This replica's share of the cycle's examples, as [updates * K, G / replicas, ...].
    batches = tf.nest.map_structure(lambda x: tf.reshape(x, [-1, per_replica, *x.shape[1:]]), data_)
    logs = {}
    for u, name in enumerate(job.cycle):
      micro_batches = [{key: value[u * job.micro_batches + k] for key, value in batches.items()}
                       for k in range(job.micro_batches)]
      grads, logs[f"{name}_loss"] = _summed_gradients(job, self.nets, name, micro_batches)
      self.optimizers_[name].apply_gradients(zip(grads, self.nets[name].trainable_variables))
    return logs


class _Clock(keras.callbacks.Callback):
  """Records when each execution (steps_per_execution train steps) ended; tf.function calls are synchronous."""

  def __init__(self):
    super().__init__()
    self.ends: list[float] = []

  def on_train_batch_end(self, batch, logs=None):
    self.ends.append(time.perf_counter())


def run_keras_fit(job: Job, strategy: tf.distribute.Strategy, jit_compile: bool = False,
                  steps_per_execution: int | None = None) -> dict:
  """`Model.fit` on a tf.data pipeline of the same examples; one train step is one cycle.

  `steps_per_execution` (in cycles) defaults to the warm-up's length and must divide it.
  """
  executions = steps_per_execution or job.warmup_cycles
  nets, optimizers = _build(job, strategy)
  cycle_examples = len(job.cycle) * job.update_examples
  dataset = (tf.data.Dataset.counter().batch(cycle_examples, drop_remainder=True)
             .map(ring.ring_examples, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .prefetch(tf.data.AUTOTUNE))
  with strategy.scope():
    model = _CycleGAN(job, nets, optimizers, strategy.num_replicas_in_sync)
    model.compile(steps_per_execution=executions, jit_compile=jit_compile)
  clock = _Clock()
  model.fit(dataset, epochs=1, steps_per_epoch=job.warmup_cycles + job.timed_cycles, verbose=0, callbacks=[clock],
            shuffle=False)
  if model.jit_compile != jit_compile:
    raise RuntimeError(f"Keras refused jit_compile={jit_compile}")
  seconds = clock.ends[-1] - clock.ends[job.warmup_cycles // executions - 1]
  return {**_figures(job, job.timed_cycles * len(job.cycle), seconds), "jit_compile": jit_compile,
          "steps_per_execution": executions}


def run_naive(job: Job, strategy: tf.distribute.Strategy) -> dict:
  """The seed article's loop as users write it under a strategy: a Python loop over micro-batches, each a
  compiled step whose optimizer call all-reduces and applies (K times the collectives and updates of trainer)."""
  nets, optimizers = _build(job, strategy)
  iterator = data.distributed_iterator(strategy, ring.ring_examples, job.global_batch_size, 0)

  def compiled_step(name):
    variables = nets[name].trainable_variables

    def replica_step(batch):
      with tf.GradientTape() as tape:
        loss = _window_loss(job, nets, name, batch) * job.micro_batches  # the mean over one micro-batch
      optimizers[name].apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss

    return tf.function(lambda batch: strategy.reduce("SUM", strategy.run(replica_step, args=(batch,)), axis=None))

  steps = {name: compiled_step(name) for name in LOSSES}

  def run_cycles(cycles):
    for _ in range(cycles):
      for name in job.cycle:
        for _ in range(job.micro_batches):
          loss = steps[name](next(iterator))
    loss.numpy()

  return _timed(job, run_cycles)


def run_compute_bound(job: Job, jit_compile: bool = False, while_loop: bool = False) -> dict:
  """The cycle's gradient computations and optimizer updates in one tf.function on one device, on data held in
  memory: what the compute alone costs. `jit_compile` compiles each update's gradient computation with XLA;
  `while_loop` visits the K micro-batches with trainer.accumulate's tf.while_loop instead of a Python loop."""
  nets, optimizers = _build(job, tf.distribute.get_strategy())
  g, k = job.global_batch_size, job.micro_batches
  windows = [[ring.ring_examples(tf.range((u * k + m) * g, (u * k + m + 1) * g, dtype=tf.int64)) for m in range(k)]
             for u in range(len(job.cycle))]

  def looped_gradients(name, window):
    def objective(batch):
      value = _window_loss(job, nets, name, batch)
      return [value], {"loss": value}
    return accumulate_gradients(objective, [[v.value for v in nets[name].trainable_variables]], window)

  summed = looped_gradients if while_loop else functools.partial(_summed_gradients, job, nets)
  gradients = {name: tf.function(functools.partial(summed, name), jit_compile=jit_compile) for name in LOSSES}

  @tf.function
  def cycles(n):
    for _ in tf.range(n):
      for name, window in zip(job.cycle, windows):
        optimizers[name].apply_gradients(zip(gradients[name](window)[0], nets[name].trainable_variables))

  def run_cycles(n):
    cycles(tf.constant(n))
    optimizers["generator"].iterations.numpy()

  return _timed(job, run_cycles)


def run_mwms_bound(job: Job, strategy: tf.distribute.Strategy) -> dict:
  """trainer's compiled program alone under `strategy` (the cycle as one CycleLoop, as train runs it), on one
  cycle's micro-batches made once and replayed from memory: no example generation and no outer loop, only the
  compiled windows, their all-reduces and the updates."""
  state = train.build(strategy, _mlps(job), {name: functools.partial(_adam, job) for name in LOSSES}, 0)
  replayed = len(job.cycle) * job.micro_batches * strategy.num_replicas_in_sync  # per-replica micro-batches
  dataset = lambda context: (data.micro_batch_dataset(ring.ring_examples, context, job.global_batch_size, 0)
                             .take(replayed // context.num_input_pipelines).cache().repeat())
  iterator = iter(strategy.distribute_datasets_from_function(dataset))
  loops = {(name, job.micro_batches): PhaseLoop(strategy, state, Phase(name, (name,), LOSSES[name], name),
                                                job.micro_batches, job.global_batch_size)
           for name in LOSSES}
  cycle = CycleLoop(_schedule(job).cycle, loops)

  def run_cycles(cycles):
    cycle.run(iterator, 0, cycles * len(job.cycle))

  return _timed(job, run_cycles)


def input_seconds(job: Job, strategy: tf.distribute.Strategy) -> float:
  """Seconds the input pipeline alone takes to produce the timed updates' micro-batches (trainer.data)."""
  iterator = data.distributed_iterator(strategy, ring.ring_examples, job.global_batch_size, 0)

  @tf.function
  def pull(n):
    for _ in tf.range(n):
      next(iterator)  # a stateful op: runs although its value is unused

  micro_batches = job.timed_cycles * len(job.cycle) * job.micro_batches
  pull(tf.constant(job.warmup_cycles * len(job.cycle) * job.micro_batches))
  start = time.perf_counter()
  pull(tf.constant(micro_batches))
  return time.perf_counter() - start
