"""Shared test setup: 4 logical CPU devices (before TF starts), and a clean gin config for every test."""

import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import pytest  # noqa: E402

from trainer.strategy import split_cpu  # noqa: E402

split_cpu(4)  # logical devices can only be configured before the TF runtime starts


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs at tmp_path/disk, as a nearly full disk (mounting needs root); unmounted afterwards."""
  disk = tmp_path / "disk"
  disk.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True,
                             text=True, timeout=30)
  except OSError as e:
    pytest.skip(f"cannot run mount: {e}")
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a 3 MB tmpfs (needs root): {mounted.stderr.strip()}")
  yield disk
  subprocess.run(["umount", "--lazy", str(disk)], check=False)
