"""Choosing the tf.distribute strategy, and splitting the CPU into logical devices to mirror over.

The cluster comes from the environment, as TensorFlow's own resolvers read it: TF_CONFIG (Kubernetes, Vertex AI,
Kubeflow TFJob, launch.local), else the variables `srun` sets for a Slurm job step.
"""

import json
import os
import socket

import tensorflow as tf
from absl import logging
from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_tasks_per_node

from trainer.errors import UserError
from trainer.faults import wait_for_peers
from trainer.threads import intra_op_threads, max_sharing

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


def cluster_tasks(tf_config: str | None) -> int:
  """How many training tasks (chief + workers) TF_CONFIG describes; 0 without TF_CONFIG. Validates it."""
  if not tf_config:
    return 0
  try:
    parsed = json.loads(tf_config)
  except json.JSONDecodeError as e:
    raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); see WORKSPACE.md") from e
  cluster, task = (parsed.get("cluster"), parsed.get("task")) if isinstance(parsed, dict) else (None, None)
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    raise UserError('TF_CONFIG needs "cluster" and "task" objects, e.g. {"cluster": {"worker": ["host:port", ...]}, '
                    '"task": {"type": "worker", "index": 0}}')
  kind, index = task.get("type"), task.get("index")
  if kind not in cluster:
    raise UserError(f"TF_CONFIG task type {kind!r} is not in its cluster ({', '.join(cluster)})")
  if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
    raise UserError(f"TF_CONFIG task index {index!r} is out of range: the cluster has {len(cluster[kind])} "
                    f"{kind} task(s)")
  return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


class _SlurmStep(tf.distribute.cluster_resolver.SlurmClusterResolver):
  """TF's SlurmClusterResolver, except that a task's devices are the GPUs it sees, none on a CPU-only node.

  TF's resolver reports `gpus_per_task` GPUs whatever the node has, and MultiWorkerMirroredStrategy takes that as
  the task's replica devices: on a CPU-only node each task claimed `GPU:0`. Slurm already restricts every task to
  its own GPUs (CUDA_VISIBLE_DEVICES), so the visible ones are the right count.
  """

  def num_accelerators(self, task_type=None, task_id=None, config_proto=None) -> dict[str, int]:
    del task_type, task_id, config_proto
    return {"GPU": len(tf.config.list_physical_devices("GPU"))}


def cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver | None:
  """The cluster of this process: TF_CONFIG if set (validated), else a Slurm step of several tasks, else None.

  For Slurm, each task listens on $TRAINER_SLURM_PORT_BASE (default 8888) plus its rank on the node, and GPUs are
  left as Slurm bound them (--gpus-per-task or one task per node); the resolver is not asked to assign them, and
  each task mirrors over the GPUs it sees, or its CPU.
  """
  if os.environ.get("TF_CONFIG"):
    cluster_tasks(os.environ["TF_CONFIG"])
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
    most = max(expand_tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"]))
    # gpus_per_node/gpus_per_task only shape the port layout here (one port per task on a node).
    return _SlurmStep(port_base=int(os.environ.get("TRAINER_SLURM_PORT_BASE", "8888")), gpus_per_node=most,
                      gpus_per_task=1, auto_set_gpu=False)
  return None


def task_addresses(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> tuple[list[str], int]:
  """Every training task's address (chief first, then workers) and the index of this task among them."""
  jobs = resolver.cluster_spec().as_dict()
  tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(jobs.get(kind, [])))]
  addresses = [jobs[kind][i] for kind, i in tasks]
  return addresses, tasks.index((resolver.task_type, resolver.task_id))


def warn_if_exposed(address: str) -> None:
  """Warns when this task's address is on loopback but the host has other interfaces.

  TensorFlow's gRPC server listens on every interface whatever the address (it binds 0.0.0.0 and cannot be told
  otherwise) and authenticates nobody. launch.local runs its workers where loopback is the only interface.
  """
  host = address.rsplit(":", 1)[0].strip("[]")
  others = [name for _, name in socket.if_nameindex() if not name.startswith("lo")]
  if (host == "localhost" or host == "::1" or host.startswith("127.")) and others:
    logging.warning("TF_CONFIG puts this task on %s, but TensorFlow listens on every interface (also %s), "
                    "unauthenticated: on a shared network start local workers with launch.local (WORKSPACE.md, "
                    "Security)", address, ", ".join(others))


def split_cpu(replicas: int) -> None:
  """Makes `replicas` logical CPU devices. Must run before anything initialises the TF runtime."""
  if replicas < 1:
    raise UserError(f"--cpu_replicas must be >= 1, got {replicas}")
  if replicas > max_sharing():
    raise UserError(f"--cpu_replicas={replicas} is more than this host's {os.cpu_count()} cores can run in reasonable "
                    f"time (at most {max_sharing()}: each replica is one more copy of every model, traced and run "
                    "on the same cores); CPU replicas stand in for GPUs in tests, so use 2 or 4")
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if replicas == 1 or (current and len(current) >= replicas):
    return
  try:
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
  except RuntimeError as e:  # the runtime already started with fewer devices
    raise UserError(f"cannot split the CPU into {replicas} devices after TensorFlow started: {e}") from e
  if not os.environ.get("TF_NUM_INTRAOP_THREADS"):  # the replicas share the cores
    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads(replicas))


def make_strategy(name: str = "auto", cpu_replicas: int = 1, startup_timeout: float = 300.0) -> tf.distribute.Strategy:
  """Creates the strategy named by `--strategy`. Call it before anything else initialises TensorFlow.

  auto: MultiWorkerMirroredStrategy when the cluster (`cluster_resolver`) has more than one task (a 'chief'
    counts as a worker), else MirroredStrategy over the visible GPUs, or over `cpu_replicas` logical CPU devices
    when there are none. With several tasks, every task first waits up to `startup_timeout` seconds for all the
    others (`trainer.faults.wait_for_peers`), since MWMS itself would wait forever.
  multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG (one task without it); each worker mirrors over its
    GPUs, or uses its CPU as one replica.
  mirrored: the same, and it is an error to ask for CPU replicas when GPUs are visible.
  one_device: OneDeviceStrategy on the first GPU, or the CPU.
  On GPUs MirroredStrategy all-reduces with NCCL (its default); on CPU with collective ops. GPU paths are not
  exercised by this repository's tests (its CI machine has no GPU).
  """
  if name not in STRATEGIES:
    raise UserError(f"--strategy={name} is unknown; choose one of {', '.join(STRATEGIES)}")
  resolver = cluster_resolver()
  addresses, index = task_addresses(resolver) if resolver else ([], 0)
  if name == "multi_worker" or (name == "auto" and len(addresses) > 1):
    if cpu_replicas > 1:
      raise UserError("--cpu_replicas applies to one host; with several workers each worker is one CPU replica")
    warn_if_exposed(addresses[index])
    wait_for_peers(addresses, index, startup_timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
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


def replicas_on_cpu(strategy: tf.distribute.Strategy) -> bool:
  """Whether every replica of this worker runs on a CPU device (what XLA and the input prefetch are chosen by)."""
  return all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in strategy.extended.worker_devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this task writes checkpoints, summaries and metrics: a 'chief' task, else worker 0, else (one host) yes."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  jobs = resolver.cluster_spec().as_dict()
  if "chief" in jobs:
    return resolver.task_type == "chief"
  return resolver.task_type == "worker" and resolver.task_id == 0


def workers(strategy: tf.distribute.Strategy) -> int:
  """How many worker processes take part in `strategy`'s collectives (1 on one host)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  return max(1, sum(len(tasks) for job, tasks in resolver.cluster_spec().as_dict().items() if job in ("chief", "worker")))


def describe(strategy: tf.distribute.Strategy) -> str:
  """The strategy's public name (tf.distribute.<name>; MultiWorkerMirroredStrategy's class is named otherwise) and
  this worker's replica devices, with the worker count when there are several."""
  devices = ", ".join(strategy.extended.worker_devices)
  for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy"):
    if isinstance(strategy, getattr(tf.distribute, name)):
      count = workers(strategy)
      return f"{name}, {count} workers, this one on {devices}" if count > 1 else f"{name} on {devices}"
  return f"{type(strategy).__name__} on {devices}"
