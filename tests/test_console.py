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


def _record(pathname: str, level: int = logging.INFO, msg: str = "a line") -> logging.LogRecord:
  return logging.LogRecord("tensorflow", level, pathname, 1, msg, (), None)


@pytest.fixture
def verbosity():
  """Sets absl's verbosity (what --verbosity=N does) for the test, and puts it back."""
  before = absl_logging.get_verbosity()
  yield absl_logging.set_verbosity
  absl_logging.set_verbosity(before)


def test_the_libraries_info_chatter_is_dropped_unless_verbosity_is_1(tmp_path, verbosity):
  import keras  # pylint: disable=import-outside-toplevel
  from tensorflow.python.checkpoint import functional_saver  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import dataset_info  # pylint: disable=import-outside-toplevel
  from trainer import controller  # pylint: disable=import-outside-toplevel
  chatter = [_record(functional_saver.__file__, msg="Sharding callback duration: %s microseconds"),
             _record(dataset_info.__file__, msg="Load dataset info from %s"),
             _record(keras.__file__),
             _record(dataset_info.__file__, logging.WARNING, "Variant folder %s has no %s")]  # the first preparation
  kept = [_record(controller.__file__, msg="checkpoint at update %d: %s"),  # trainer's own
          _record(str(tmp_path / "my_models.py")),  # a user's module
          _record(functional_saver.__file__, logging.WARNING, "something TensorFlow really warns of"),
          _record(dataset_info.__file__, logging.ERROR)]
  quiet = console.QuietLibraries()
  verbosity(0)
  assert [quiet.filter(r) for r in chatter + kept] == [False] * len(chatter) + [True] * len(kept)
  verbosity(1)
  assert all(quiet.filter(r) for r in chatter + kept)


def test_every_record_meets_the_filter_on_absls_handler_once():
  console.quiet_libraries()
  console.quiet_libraries()
  assert sum(isinstance(f, console.QuietLibraries) for f in absl_logging.get_absl_handler().filters) == 1


def test_tfds_prints_are_dropped_unless_verbosity_is_1(capsys, verbosity):
  for level, shown in ((0, ""), (1, "Downloading and preparing dataset Unknown size\n")):
    verbosity(level)
    with console.quiet_prints():
      print("Downloading and preparing dataset Unknown size")
    assert capsys.readouterr().out == shown
