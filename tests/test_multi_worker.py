"""MultiWorkerMirroredStrategy with real worker processes on loopback (trainer.strategy, trainer.train)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import REPO, checkpoint_state, max_diff, run
from trainer.errors import UserError
from trainer.strategy import cluster_tasks

ARGS = ["--gin_file=configs/smoke.gin", "--gin_file=tests/equivalence.gin"]  # see that file


@pytest.mark.slow
def test_two_workers_end_on_the_weights_of_one_replica(tmp_path):
  single = run("-m", "trainer.main", f"--model_dir={tmp_path / 'single'}", *ARGS)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = run("-m", "launch.local", "--num_workers=2", "--", f"--model_dir={tmp_path / 'multi'}", *ARGS)
  assert multi.returncode == 0, multi.stdout[-3000:]
  assert "[worker 0]" in multi.stdout and "MultiWorkerMirroredStrategy" in multi.stdout
  assert "on 2 replica(s)" in multi.stdout
  diff = max_diff(checkpoint_state(tmp_path / "single"), checkpoint_state(tmp_path / "multi"))
  print(f"max |w(1 replica) - w(2 workers)| = {diff:.3g}")
  assert diff <= 1e-6, diff
  # Only the chief (worker 0) wrote the run's files and evaluated.
  assert {"checkpoints", "metrics.jsonl", "operative_config.gin", "summaries"} <= set(os.listdir(tmp_path / "multi"))
  assert "[worker 0] " in multi.stdout.split("eval at update 12")[0].splitlines()[-1]
  assert not any(line.startswith("[worker 1]") and "eval at" in line for line in multi.stdout.splitlines())


@pytest.mark.slow
def test_a_killed_worker_restarts_the_job_which_ends_on_the_uninterrupted_weights(tmp_path):
  longer = [*ARGS, "--gin_bindings=TRAIN_STEPS=600", "--gin_bindings=train.log_every=100",
            "--gin_bindings=train.checkpoint_every=200", "--gin_bindings=train.steps_per_loop=20"]
  # The reference is an uninterrupted run on the same topology: over 600 GAN updates the 1e-7 rounding difference
  # between 1 and 2 replicas grows (seen: 1.7), so only the same topology is expected to match exactly.
  whole = run("-m", "launch.local", "--num_workers=2", "--", f"--model_dir={tmp_path / 'whole'}", *longer)
  assert whole.returncode == 0, whole.stdout[-3000:]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  launcher = subprocess.Popen(
      [sys.executable, "-m", "launch.local", "--num_workers=2", "--max_restarts=1", "--grace_seconds=5", "--",
       f"--model_dir={tmp_path / 'multi'}", *longer],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, killed_at = [], None
  for line in launcher.stdout:
    lines.append(line)
    if line.startswith("[launch] started") and not killed_at:
      pids = [int(p) for p in line.split("(pids ")[1].rstrip(")\n").split()]
    if line.startswith("[worker 1]") and "update 200/600" in line and not killed_at:
      killed_at = time.monotonic()
      os.kill(pids[1], signal.SIGKILL)
    if line.startswith("[launch] restarting") and killed_at:
      detected = time.monotonic() - killed_at
  launcher.wait(timeout=300)
  output = "".join(lines)
  assert launcher.returncode == 0, output[-3000:]
  assert killed_at and "worker 1 exited with code 137" in output, output[-3000:]
  assert detected <= 30, detected
  assert "from update 200 of 600" in output  # the restarted job resumed from the last checkpoint
  diff = max_diff(checkpoint_state(tmp_path / "whole"), checkpoint_state(tmp_path / "multi"))
  print(f"crash at update 200, detected in {detected:.1f}s; max |w(uninterrupted) - w(restarted)| = {diff:.3g}")
  assert diff <= 1e-6, diff


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
