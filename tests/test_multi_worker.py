"""MultiWorkerMirroredStrategy with real worker processes on loopback (trainer.strategy, trainer.train)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainer.errors import UserError
from trainer.strategy import cluster_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--gin_file=configs/smoke.gin", "--gin_file=tests/equivalence.gin"]  # see that file


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start(model_dir, tf_config=None, extra=()):
  env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # gRPC honours proxies even for loopback: drop them
  if tf_config:
    env["TF_CONFIG"] = json.dumps(tf_config)
  return subprocess.Popen([sys.executable, "-m", "trainer.main", f"--model_dir={model_dir}", *ARGS, *extra],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _state(model_dir):
  reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
          if "OBJECT_GRAPH" not in n and "save_counter" not in n}


@pytest.mark.slow
def test_two_workers_end_on_the_weights_of_one_replica(tmp_path):
  single = _start(tmp_path / "single")
  out, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out[-3000:]

  cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
  workers = [_start(tmp_path / "multi", {"cluster": cluster, "task": {"type": "worker", "index": i}})
             for i in range(2)]
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  assert "MultiWorkerMirroredStrategy" in outputs[0] and "on 2 replica(s)" in outputs[0]

  one, two = _state(tmp_path / "single"), _state(tmp_path / "multi")
  assert one.keys() == two.keys() and len(one) >= 12  # both models: 3 kernels and 3 biases each
  diff = max(float(np.max(np.abs(one[n] - two[n]))) for n in one)
  print(f"max |w(1 replica) - w(2 workers)| = {diff:.3g}")
  assert diff <= 1e-6, diff
  # Only the chief (worker 0) wrote the run's files; the other worker deleted its private checkpoints.
  assert {"checkpoints", "metrics.jsonl", "operative_config.gin", "summaries"} <= set(os.listdir(tmp_path / "multi"))
  assert "update 12/12" in outputs[0] and "eval at update 12" in outputs[0] and "eval at" not in outputs[1]


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs "cluster" and "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is out of range"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task type 'ps' is not in its cluster"),
])
def test_malformed_tf_config_says_what_is_wrong(tf_config, message):
  with pytest.raises(UserError, match=message):
    cluster_tasks(tf_config)


def test_chief_counts_as_a_worker():
  assert cluster_tasks('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}') == 2
  assert cluster_tasks(None) == 0
