"""Choosing the tf.distribute strategy, and splitting the CPU into logical devices to mirror over."""

import tensorflow as tf

from trainer.errors import UserError

STRATEGIES = ("auto", "mirrored", "one_device")


def split_cpu(replicas: int) -> None:
  """Makes `replicas` logical CPU devices. Must run before anything initialises the TF runtime."""
  if replicas < 1:
    raise UserError(f"--cpu_replicas must be >= 1, got {replicas}")
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if replicas == 1 or (current and len(current) >= replicas):
    return
  try:
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
  except RuntimeError as e:  # the runtime already started with fewer devices
    raise UserError(f"cannot split the CPU into {replicas} devices after TensorFlow started: {e}") from e


def make_strategy(name: str = "auto", cpu_replicas: int = 1) -> tf.distribute.Strategy:
  """Creates the strategy named by `--strategy`.

  auto: MirroredStrategy over the visible GPUs, or over `cpu_replicas` logical CPU devices when there are none.
  mirrored: the same, and it is an error to ask for CPU replicas when GPUs are visible.
  one_device: OneDeviceStrategy on the first GPU, or the CPU.
  On GPUs MirroredStrategy all-reduces with NCCL (its default); on CPU with collective ops. GPU paths are not
  exercised by this repository's tests (its CI machine has no GPU).
  """
  if name not in STRATEGIES:
    raise UserError(f"--strategy={name} is unknown; choose one of {', '.join(STRATEGIES)}")
  split_cpu(cpu_replicas)
  gpus = tf.config.list_logical_devices("GPU")
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if gpus:
    if cpu_replicas > 1:
      raise UserError(f"--cpu_replicas={cpu_replicas} asks for CPU replicas, but {len(gpus)} GPU(s) are visible; "
                      "drop the flag to mirror over the GPUs")
    return tf.distribute.MirroredStrategy([d.name for d in gpus])
  cpus = tf.config.list_logical_devices("CPU")[:cpu_replicas]
  return tf.distribute.MirroredStrategy([d.name for d in cpus])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this task writes checkpoints, summaries and metrics: a 'chief' task, else worker 0, else (one host) yes."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  jobs = resolver.cluster_spec().as_dict()
  if "chief" in jobs:
    return resolver.task_type == "chief"
  return resolver.task_type == "worker" and resolver.task_id == 0
