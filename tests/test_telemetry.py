"""trainer.telemetry: pictures go to model_dir/samples/ as PNG (and TensorBoard), only on the chief; a full disk is
one line."""

import os

import numpy as np
import pytest
import tensorflow as tf

from trainer.errors import UserError
from trainer.telemetry import Telemetry


def test_an_image_is_written_as_a_png_named_by_update(tmp_path):
  telemetry = Telemetry(str(tmp_path), total_updates=10)
  picture = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  path = telemetry.image("eval/samples", picture, 7)
  telemetry.close()
  assert path == os.path.join(tmp_path, "samples", "eval_samples_000007.png")
  np.testing.assert_array_equal(tf.io.decode_png(open(path, "rb").read()).numpy(), picture)
  assert tf.io.gfile.glob(str(tmp_path / "summaries" / "events.out.tfevents.*"))


def test_a_task_that_writes_no_files_writes_no_pictures(tmp_path):
  telemetry = Telemetry(str(tmp_path), total_updates=10, write_files=False)
  assert telemetry.image("eval/samples", np.zeros((2, 2, 1), np.uint8), 1) is None
  assert not os.path.exists(tmp_path / "samples")


@pytest.mark.parametrize("picture", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                     np.zeros((4, 4, 3), np.float32)])
def test_a_picture_that_is_not_uint8_hwc_with_1_or_3_channels_is_refused(tmp_path, picture):
  telemetry = Telemetry(str(tmp_path), total_updates=10)
  with pytest.raises(ValueError, match="must be uint8 \\[H, W, 1 or 3\\]"):
    telemetry.image("eval/samples", picture, 1)
  telemetry.close()
  assert not os.path.exists(tmp_path / "samples")


def _fill(directory):
  """Writes zeros into directory/filler until its disk is full."""
  with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:  # nothing left to flush at close
    try:
      while True:
        f.write(b"\0" * 65536)
    except OSError:
      pass


def test_a_full_disk_while_writing_figures_or_pictures_is_one_line_naming_what_to_do(small_disk):
  telemetry = Telemetry(str(small_disk), total_updates=10)
  _fill(small_disk)
  expected = (f"disk full while writing {{}} in {small_disk}: free space there or choose another --model_dir, then "
              "rerun; it starts from the beginning")
  with pytest.raises(UserError) as raised:
    telemetry.image("eval/samples", np.zeros((64, 64, 3), np.uint8), 5)
  assert str(raised.value) == expected.format("the picture eval_samples_000005.png")
  with pytest.raises(UserError) as raised:
    for update in range(1000):  # the first records may fit in what the disk still buffers
      telemetry.write({"update": update, "a/loss": 0.5, "padding": "x" * 4096}, update)
  assert str(raised.value) == expected.format("metrics.jsonl and TensorBoard events")
  telemetry.close()  # what it still buffers is lost, without a second error
