"""trainer.checkpoints: a process killed while it writes a checkpoint leaves the previous one restorable."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.processes import REPO, run

# Wide models make a checkpoint ~100 MB (weights and both Adam slots), so its write lasts long enough to be hit.
ARGS = ["--gin_file=configs/smoke.gin", "--gin_bindings=TRAIN_STEPS=40", "--gin_bindings=train.checkpoint_every=10",
        "--gin_bindings=train.eval_every=0", "--gin_bindings=generator/mlp.hidden=(2048, 2048)",
        "--gin_bindings=critic/mlp.hidden=(2048, 2048)"]


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_restorable(tmp_path):
  checkpoints = tmp_path / "checkpoints"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  process = subprocess.Popen([sys.executable, "-m", "trainer.main", f"--model_dir={tmp_path}", *ARGS], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  torn = None
  deadline = time.monotonic() + 240
  while torn is None and process.poll() is None and time.monotonic() < deadline:
    # A write in progress shows as ckpt-N_temp/ (TF writes there, then renames); ckpt-10 must be complete first.
    writing = [n for n in os.listdir(checkpoints) if n.endswith("_temp")] if checkpoints.exists() else []
    if writing and (checkpoints / "ckpt-10.index").exists() and writing[0] != "ckpt-10_temp":
      process.send_signal(signal.SIGKILL)
      torn = writing[0].removesuffix("_temp")
    time.sleep(0.002)
  process.wait(timeout=60)
  assert torn, "the run ended before a checkpoint write could be interrupted"
  assert not (checkpoints / f"{torn}.index").exists()  # really torn: the write had not finished
  latest = tf.train.latest_checkpoint(str(checkpoints))
  assert latest and os.path.basename(latest) != torn and int(latest.rsplit("-", 1)[1]) >= 10, latest

  resumed = run("-m", "trainer.main", f"--model_dir={tmp_path}", *ARGS)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"from update {latest.rsplit('-', 1)[1]} of 40" in resumed.stderr
  assert os.path.basename(tf.train.latest_checkpoint(str(checkpoints))) == "ckpt-40"
  print(f"killed while writing {torn}; the rerun resumed from {os.path.basename(latest)} and finished")
