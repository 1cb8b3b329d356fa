"""trainer.strategy: where the cluster comes from (TF_CONFIG, else a Slurm step), and a real Slurm-shaped run."""

import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

from launch.local import free_ports
from tests import toy
from tests.processes import REPO, checkpoint_state
from trainer.strategy import cluster_resolver, describe, replicas_on_cpu, task_addresses

SLURM_STEP = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
              "TRAINER_SLURM_PORT_BASE": "9000"}


def _free(port: int) -> bool:
  with socket.socket() as s:
    return s.connect_ex(("127.0.0.1", port)) != 0


def _environ(monkeypatch, variables):
  for name in [n for n in os.environ if n.startswith("SLURM_") or n == "TF_CONFIG"]:
    monkeypatch.delenv(name)
  for name, value in variables.items():
    monkeypatch.setenv(name, value)


def test_replicas_on_cpu_reads_the_replicas_device_type():
  """What PhaseLoop.jit_compile = 'auto' and the input prefetch decide by; a GPU strategy cannot be built here, so
  its device list is given as MirroredStrategy would hold it."""
  assert replicas_on_cpu(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
  class _Extended:  # pylint: disable=too-few-public-methods
    worker_devices = ("/job:localhost/replica:0/task:0/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1")
  assert not replicas_on_cpu(type("GpuStrategy", (), {"extended": _Extended()})())


def test_a_slurm_step_of_several_tasks_is_a_cluster(monkeypatch):
  _environ(monkeypatch, {**SLURM_STEP, "SLURM_PROCID": "3"})
  addresses, index = task_addresses(cluster_resolver())
  assert addresses == ["node07:9000", "node07:9001", "node08:9000", "node08:9001"]
  assert index == 3


def test_a_slurm_task_mirrors_over_the_devices_of_its_node(monkeypatch):
  """MultiWorkerMirroredStrategy takes a task's devices from the resolver's GPU count, and TF's Slurm resolver gave
  gpus_per_task whatever the node had: on a CPU-only node every task claimed GPU:0."""
  _environ(monkeypatch, {**SLURM_STEP, "SLURM_PROCID": "1"})
  gpus = len(tf.config.list_physical_devices("GPU"))
  expected = ([f"/job:worker/task:1/device:GPU:{i}" for i in range(gpus)], "GPU") if gpus else (
      ["/job:worker/task:1/device:CPU:0"], "CPU")
  # What MWMS itself calls to list them (it needs no self); building the strategy would start a server.
  devices, kind = CollectiveAllReduceExtended._initialize_local_devices(None, cluster_resolver(), "/job:worker/task:1")
  assert (list(devices), kind) == expected


def test_tf_config_wins_over_slurm_and_one_task_is_no_cluster(monkeypatch):
  _environ(monkeypatch, {**SLURM_STEP, "SLURM_PROCID": "0",
                         "TF_CONFIG": '{"cluster": {"chief": ["c:1"], "worker": ["w:2"]}, '
                                      '"task": {"type": "worker", "index": 0}}'})
  assert task_addresses(cluster_resolver()) == (["c:1", "w:2"], 1)
  _environ(monkeypatch, {"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"})
  assert cluster_resolver() is None


@pytest.mark.slow
def test_two_srun_tasks_train_as_one_multi_worker_job(tmp_path):
  """What `srun` would start: the same command twice, told apart only by SLURM_PROCID."""
  base = next(p for p in range(free_ports(1)[0], 65000) if _free(p) and _free(p + 1))  # the resolver takes base + rank
  step = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2",
          "TRAINER_SLURM_PORT_BASE": str(base), "TF_CPP_MIN_LOG_LEVEL": "2"}
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and "proxy" not in k.lower()}
  tasks = [subprocess.Popen([sys.executable, "-m", "trainer.main", f"--model_dir={tmp_path}",
                             "--gin_file=configs/smoke.gin", "--gin_bindings=TRAIN_STEPS=6"],
                            cwd=REPO, env={**env, **step, "SLURM_PROCID": str(i)}, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  logs = [t.communicate(timeout=240)[1] for t in tasks]
  assert [t.returncode for t in tasks] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  assert "on 2 replica(s)" in logs[0] and "MultiWorkerMirroredStrategy" in logs[0]
  assert checkpoint_state(tmp_path)["update/.ATTRIBUTES/VARIABLE_VALUE"] == 6


def test_the_start_up_line_names_the_strategy_as_users_know_it():
  assert describe(toy.strategy(2)) == ("MirroredStrategy on /job:localhost/replica:0/task:0/device:CPU:0, "
                                       "/job:localhost/replica:0/task:0/device:CPU:1")
  assert describe(tf.distribute.OneDeviceStrategy("/cpu:0")) == (
      "OneDeviceStrategy on /job:localhost/replica:0/task:0/device:CPU:0")
