"""trainer.faults: the start-up rendezvous, the stall watchdog, and preemption (SIGTERM) on one host."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from launch.local import free_ports
from tests import toy
from tests.processes import REPO
from trainer.errors import ClusterFault, Preempted
from trainer.faults import EXIT_STALLED, wait_for_peers


def test_every_task_leaves_the_rendezvous_once_all_have_joined():
  addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
  errors = []

  def task(i, delay):
    time.sleep(delay)  # tasks start at different times, as pods and srun steps do
    try:
      wait_for_peers(addresses, i, timeout=20)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=task, args=(i, 0.5 * i)) for i in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  assert not errors and not any(t.is_alive() for t in threads), errors


def test_a_missing_peer_is_named_after_the_timeout():
  addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
  start = time.monotonic()
  # Task 1's port is held by something that is not the rendezvous (as the gRPC server of an older incarnation of
  # that task would be); task 2's port is closed.
  with socket.socket() as other:
    other.bind(("127.0.0.1", int(addresses[1].rsplit(":", 1)[1])))
    other.listen()
    with pytest.raises(ClusterFault, match=rf"peer task\(s\) 1 at {addresses[1]}, 2 at {addresses[2]} did not "
                                           r"join within 1 s \(--startup_timeout\)"):
      wait_for_peers(addresses, 0, timeout=1)
  assert time.monotonic() - start < 10


def test_a_busy_port_is_reported():
  addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
  with socket.socket() as holder:
    holder.bind(("127.0.0.1", int(addresses[0].rsplit(":", 1)[1])))
    holder.listen()
    with pytest.raises(ClusterFault, match=f"cannot listen on {addresses[0]}"):
      wait_for_peers(addresses, 0, timeout=1)


@pytest.mark.slow
def test_the_watchdog_ends_a_stuck_call_with_exit_code_4_after_its_cleanup(tmp_path):
  scratch = tmp_path / "worker-checkpoints"
  scratch.mkdir()
  program = ("import shutil, time\nfrom trainer.faults import Watchdog\n"
             f"w = Watchdog(1.0, on_exit=lambda: shutil.rmtree({str(scratch)!r}))\n"
             "with w.watch('updates 1-5'):\n  time.sleep(0.2)\nwith w.watch('updates 6-9'):\n  time.sleep(60)\n")
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == EXIT_STALLED, result.stderr[-2000:]
  assert "error: updates 6-9 did not finish within 1 s (--stall_timeout)" in result.stderr
  assert time.monotonic() - start < 30
  assert not scratch.exists()  # a non-chief worker's temporary checkpoint directory is not left behind


def _sigterm_at(update):
  def evaluate(models):
    del models
    if not evaluate.sent:  # SIGTERM arrives during the run, at a known update
      evaluate.sent = True
      os.kill(os.getpid(), signal.SIGTERM)
    return {}
  evaluate.sent = False
  return evaluate


def test_sigterm_saves_at_the_next_boundary_and_the_relaunch_ends_on_the_uninterrupted_weights(tmp_path):
  kwargs = dict(cycle=[("a", 3, 2), ("b", 2)], train_steps=14, checkpoint_every=10, steps_per_loop=2)
  whole = toy.run(tmp_path / "whole", **kwargs)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Preempted, match=r"SIGTERM received; saved update 5 of 14"):
    toy.run(tmp_path / "preempted", evaluate=_sigterm_at(5), eval_every=5, **kwargs)
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
  assert os.path.exists(tmp_path / "preempted" / "checkpoints" / "ckpt-5.index")
  resumed = toy.run(tmp_path / "preempted", **kwargs)
  assert resumed.update == 14
  assert toy.max_diff(toy.weights(whole), toy.weights(resumed)) == 0
  for n in "ab":
    for a, b in zip(whole.optimizers[n].variables, resumed.optimizers[n].variables):
      np.testing.assert_array_equal(np.array(a), np.array(b))
