"""What a run prints besides trainer's own lines: TensorFlow's start-up chatter, its copies of tracebacks, flag errors.

A user should see the progress lines and, on bad input, one `error:` line and exit code 2 (README, "Bad input");
`--verbosity=1` adds the traceback. TensorFlow adds lines that read like faults and are not: every start on a
machine without a GPU driver ends its C++ start-up chatter with `E0000 ... failed call to cuInit`, and a step that
fails while traced inside `strategy.run` has its whole traceback logged by TensorFlow's coordinator thread before
trainer.main sees the exception. This module hides exactly those, and makes absl's flag errors one line too.
It also keeps TensorFlow's, Keras's, TFDS's and gin's own INFO records off the console (`--verbosity=1` shows them):
they narrate those libraries' work (a checkpoint's sharding callback, the devices a strategy uses, a SavedModel's
assets in a temporary directory, TFDS's reads of its metadata), and trainer says in one line of its own each what a
user needs of it: where a checkpoint or an export went, which data is read.
No TensorFlow import at module level: launch.local uses `parse_flags` without starting TensorFlow.
"""

import contextlib
import functools
import glob
import importlib.util
import io
import logging
import math
import os
import re
import sys
import tempfile
import traceback
from typing import Iterator

from absl import flags
from absl import logging as absl_logging

from trainer.errors import Stop

# TensorFlow's C++ prints these on every start, before TF_CPP_MIN_LOG_LEVEL applies; none asks anything of the user.
_CHATTER = (r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$|"
            r"\] oneDNN custom operations are on\.")
# Without a GPU driver TensorFlow says so, then logs the failure of cuInit as an error. Both are dropped only when
# the machine has no NVIDIA device either: with one, they are the clue to a broken driver install.
_NO_GPU = r"\] Could not find cuda drivers on your machine|\] failed call to cuInit: "
# What TensorFlow logs about an exception that trainer.main then prints as one line (or with --verbosity=1, whole).
_REPEATS = ("Error reported to Coordinator: ",  # tensorflow/python/training/coordinator.py, with the traceback
            # gin re-raises through a helper AutoGraph cannot convert; it runs as-is, and only while raising.
            "AutoGraph could not transform <function augment_exception_message_and_reraise ")
# The libraries whose INFO records are chatter; known by the file a record comes from, not by its text.
_NARRATORS = ("tensorflow", "keras", "tensorflow_datasets", "gin")
# Their warnings are kept, except this one (a format string, as logged): TFDS gives it, once or twice, on the first
# preparation of a dataset, about the folder it is about to fill.
_EXPECTED_WARNINGS = ("Variant folder %s has no %s",)


def _gpu_hardware() -> bool:
  return os.path.exists("/proc/driver/nvidia") or bool(glob.glob("/dev/nvidia[0-9]*"))


def _dropped() -> re.Pattern:
  """The start-up lines not to show; none with TF_CPP_MIN_LOG_LEVEL=0 (the user asked for every C++ line)."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    return re.compile(r"(?!)")  # matches nothing
  return re.compile(_CHATTER if _gpu_hardware() else f"{_CHATTER}|{_NO_GPU}")


@contextlib.contextmanager
def _stderr_filtered(drop: re.Pattern) -> Iterator[None]:
  """Sends file descriptor 2 (where C++ logs go) to a file, then prints what it got except lines matching `drop`.

  A file, not a pipe: nothing has to read while TensorFlow writes, so a long message cannot block the import.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [l for l in captured.read().decode(errors="replace").splitlines(True) if not drop.search(l)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


class _DropRepeats(logging.Filter):
  """Drops TensorFlow's log records of an exception trainer.main reports itself, unless --verbosity >= 1."""

  def filter(self, record: logging.LogRecord) -> bool:
    return absl_logging.get_verbosity() >= 1 or not record.getMessage().startswith(_REPEATS)


@functools.lru_cache(maxsize=1024)
def _real(path: str) -> str:
  return os.path.realpath(path)


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
  """The directories of the installed packages `names` (located, not imported), each ending in a separator."""
  dirs = []
  for name in names:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
      dirs += [os.path.join(_real(d), "") for d in spec.submodule_search_locations]
  return tuple(dirs)


class QuietLibraries(logging.Filter):
  """Drops the INFO (and DEBUG) records logged from inside the `packages`, and their expected warnings, unless
  --verbosity >= 1. Everything else passes: trainer's lines, a user's modules', the libraries' real warnings."""

  def __init__(self, packages: tuple[str, ...] = _NARRATORS):
    super().__init__()
    self._dirs = _package_dirs(packages)

  def filter(self, record: logging.LogRecord) -> bool:
    if absl_logging.get_verbosity() >= 1 or not _real(record.pathname).startswith(self._dirs):
      return True
    return record.levelno >= logging.WARNING and record.msg not in _EXPECTED_WARNINGS


def quiet_libraries() -> None:
  """Puts QuietLibraries on absl's handler, which every record reaches (absl's own, TensorFlow's, Python's)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())


@contextlib.contextmanager
def quiet_prints() -> Iterator[None]:
  """Within: what is printed to stdout is dropped unless --verbosity >= 1. For TFDS, which prints two lines about a
  dataset it prepares ("Downloading and preparing dataset Unknown size ..." for one it does not download)."""
  if absl_logging.get_verbosity() >= 1:
    yield
  else:
    with contextlib.redirect_stdout(io.StringIO()):
      yield


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow and lets it find its devices (cuInit runs then, not at import) without the chatter above,
  and from then on drops TensorFlow's log records of exceptions trainer.main reports itself, and the libraries'
  INFO chatter. For any `python -m trainer.*` program that uses TensorFlow, before anything imports it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hides C++ INFO and WARNING lines, read at TensorFlow's import
  # Before TensorFlow's import, which otherwise adds a stderr handler of its own beside absl's: every line twice.
  absl_logging.use_absl_handler()
  quiet_libraries()
  with _stderr_filtered(_dropped()):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.list_physical_devices()
  tf.get_logger().addFilter(_DropRepeats())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (for app.run), with a bad flag reported as bad input: one `error:` line, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).strip().splitlines()[0]} (--helpshort lists the flags)", file=sys.stderr)
    sys.exit(2)


def positive_seconds(value: float) -> bool:
  """For flags.register_validator: a finite number of seconds > 0 (NaN and inf are not)."""
  return math.isfinite(value) and value > 0


@contextlib.contextmanager
def exit_on_stop() -> Iterator[None]:
  """Within: a trainer Stop (bad input, failed training, a cluster fault, a preemption) ends the process with its
  one line on stderr and its documented exit code; `--verbosity=1` adds the traceback."""
  try:
    yield
  except Stop as e:
    if absl_logging.get_verbosity() >= 1:
      traceback.print_exc()
    print(f"{e.label}: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(e.exit_code)
