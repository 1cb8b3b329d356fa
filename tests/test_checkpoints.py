"""trainer.checkpoints: a process killed while it writes a checkpoint, or a full disk, leaves the previous one the
latest and restorable; a full disk is one line and exit code 2."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.processes import REPO, run
from trainer import checkpoints
from trainer.errors import UserError

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


SIZE = 400_000  # float32s: a 1.6 MB checkpoint, so the 3 MB disk holds one and fails writing the second


def _manager(directory) -> tuple[tf.Variable, tf.train.CheckpointManager]:
  weights = tf.Variable(tf.fill([SIZE], 1.0))
  return weights, tf.train.CheckpointManager(tf.train.Checkpoint(weights=weights), str(directory), max_to_keep=3)


def _restored(path: str) -> float:
  weights = tf.Variable(tf.zeros([SIZE]))
  tf.train.Checkpoint(weights=weights).restore(path).assert_existing_objects_matched()
  return float(weights[0])


@pytest.mark.parametrize("name, advice", [
    ("checkpoints", "free space there or choose another --model_dir, then rerun; it resumes from ckpt-10"),
    (f"{checkpoints.SCRATCH_PREFIX}x1y2", "(this worker's scratch copy, under TMPDIR): free space there or set TMPDIR"),
])
def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint_the_latest(small_disk, name, advice):
  directory = small_disk / name
  weights, manager = _manager(directory)
  assert checkpoints.save(manager, 10).endswith("ckpt-10")
  weights.assign(tf.fill([SIZE], 2.0))
  with pytest.raises(UserError) as raised:
    checkpoints.save(manager, 20)
  message = str(raised.value)
  assert raised.value.exit_code == 2 and "\n" not in message, message
  assert message.startswith(f"disk full while saving checkpoint ckpt-20 to {directory}") and advice in message
  # No ckpt-20_temp/ (TensorFlow leaves it) and no part of ckpt-20; ckpt-10 is still the latest and restores.
  assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index"]
  assert _restored(tf.train.latest_checkpoint(str(directory))) == 1.0


def _fail_recording(manager, error):
  """Makes the manager's update of its `checkpoint` index raise `error`, after leaving a temp file as TF's
  atomic write does when the disk fills under it."""
  def record_state():
    (pathlib.Path(manager.directory) / "checkpoint.tmp0123abcd").write_text("")
    raise error
  manager._record_state = record_state  # pylint: disable=protected-access


def test_a_full_disk_while_the_index_is_written_removes_the_unrecorded_checkpoint(tmp_path):
  weights, manager = _manager(tmp_path)
  checkpoints.save(manager, 10)
  _fail_recording(manager, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
  with pytest.raises(UserError, match=f"ckpt-20 to {tmp_path}: free space there"):
    checkpoints.save(manager, 20)
  assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index"]
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-10")


def test_other_resource_errors_are_not_taken_for_a_full_disk(tmp_path):
  weights, manager = _manager(tmp_path)
  _fail_recording(manager, tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
  with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM"):
    checkpoints.save(manager, 10)


@pytest.mark.slow
def test_a_full_disk_through_trainer_main_exits_2_with_one_line(small_disk):
  # The digits GAN's checkpoint is 2.1 MB: ckpt-100 fits on the 3 MB disk, ckpt-200 does not.
  model_dir = small_disk / "run"
  result = run("-m", "trainer.main", "--gin_file=configs/gan_digits.gin", f"--model_dir={model_dir}",
               "--gin_bindings=TRAIN_STEPS=300", "--gin_bindings=train.checkpoint_every=100",
               "--gin_bindings=train.eval_every=0")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: disk full while saving checkpoint ckpt-200 to {model_dir / 'checkpoints'}: free space "
                    "there or choose another --model_dir, then rerun; it resumes from ckpt-100"], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not [n for n in os.listdir(model_dir / "checkpoints") if "temp" in n or "tmp" in n]
  assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-100")
