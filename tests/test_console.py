"""trainer.console: which of TensorFlow's lines a run hides, and which it must not."""

import logging
import os

import pytest
import tensorflow as tf
from absl import logging as absl_logging

from trainer import console

CHATTER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
NO_DRIVER = "I0000 00:00:1.2 7 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
CUINIT = ("E0000 00:00:1.3 7 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
          "UNKNOWN ERROR (303)\n")
REAL = "E0000 00:00:1.4 7 some_op.cc:12] something TensorFlow really means\n"


@pytest.mark.parametrize("gpu_hardware, level, shown", [
    (False, "2", [REAL]),  # a CPU machine: the no-driver lines are expected, not errors
    (True, "2", [NO_DRIVER, CUINIT, REAL]),  # an NVIDIA device but no driver found: a broken install, keep them
    (False, "0", [CHATTER, NO_DRIVER, CUINIT, REAL]),  # TF_CPP_MIN_LOG_LEVEL=0: the user asked for every line
])
def test_start_up_chatter_is_dropped_but_not_real_errors(capfd, monkeypatch, gpu_hardware, level, shown):
  monkeypatch.setattr(console, "_gpu_hardware", lambda: gpu_hardware)
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
  with console._stderr_filtered(console._dropped()):  # pylint: disable=protected-access
    os.write(2, "".join([CHATTER, NO_DRIVER, CUINIT, REAL]).encode())  # as TensorFlow's C++ writes: to fd 2
  assert capfd.readouterr().err == "".join(shown)


def test_tensorflows_log_of_an_exception_main_reports_is_dropped_unless_verbosity_is_1(caplog):
  console.import_tensorflow_quietly()  # TensorFlow is imported already here: this only adds the filter
  verbosity = absl_logging.get_verbosity()
  try:
    for level, kept in ((0, ["an ordinary line"]), (1, ["Error reported to Coordinator: x", "an ordinary line"])):
      absl_logging.set_verbosity(level)
      caplog.clear()
      with caplog.at_level(logging.INFO, logger="tensorflow"):
        tf.get_logger().info("Error reported to Coordinator: %s", "x")
        tf.get_logger().info("an ordinary line")
      assert [r.getMessage() for r in caplog.records] == kept
  finally:
    absl_logging.set_verbosity(verbosity)
