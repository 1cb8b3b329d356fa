"""Helpers for the tests that run trainer and launcher processes and compare their checkpoints."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
  """Runs `python *args` in the repository, capturing its output; `env` adds to this process's environment."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def checkpoint_state(model_dir) -> dict[str, np.ndarray]:
  """Every tensor of the latest checkpoint: weights, optimizer slots and iterations, counters."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
          if "OBJECT_GRAPH" not in n and "save_counter" not in n}


def max_diff(one: dict, two: dict) -> float:
  """The largest absolute difference between two checkpoint states holding the same tensors."""
  assert one.keys() == two.keys() and len(one) >= 12  # both models: 3 kernels and 3 biases each
  strings = [n for n in one if isinstance(one[n], bytes)]  # the data fingerprint: compared, not subtracted
  assert all(one[n] == two[n] for n in strings), [(one[n], two[n]) for n in strings]
  return max(float(np.max(np.abs(one[n] - two[n]))) for n in one if n not in strings)
