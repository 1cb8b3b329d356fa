"""Threads per op when several replicas (--cpu_replicas) or local workers (launch.local) share one host's cores,
and how many of them one host takes."""

import os


def intra_op_threads(sharing: int) -> int:
  """cores // `sharing`, at least 1. The replicas or workers run their ops at the same time, so TensorFlow's
  default of every core per op oversubscribes the CPU (docs/performance.md has the figures).
  TF_NUM_INTRAOP_THREADS, where set, wins over this; this module imports nothing heavy, so launchers can use it."""
  return max(1, (os.cpu_count() or 1) // sharing)


def max_sharing() -> int:
  """The most CPU replicas (--cpu_replicas) or local workers (launch.local --num_workers) one host runs: 2 per core,
  at least 8. They stand in for GPUs and hosts in tests; past this a run spends minutes building and tracing copies
  of every model on the same cores, so it is refused at once instead."""
  return max(8, 2 * (os.cpu_count() or 1))
