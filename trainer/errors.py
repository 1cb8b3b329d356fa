"""Errors the user can fix. `trainer.main` prints their message as one line and exits non-zero."""

import difflib
from typing import Iterable


class UserError(Exception):
  """Bad input: a config, flag or file the user can change. Exit code 2."""

  exit_code = 2
  label = "error"  # trainer.main prints "<label>: <message>"
  # Raised while a tf.function or tf.data function is traced (a dataset or a model shape is checked there):
  # without this, AutoGraph re-raises it as a StagingError holding a multi-line trace, and main cannot catch it.
  ag_pass_through = True


class TrainingFailed(UserError):
  """Training stopped on a condition that is not a bug (e.g. a non-finite loss). Exit code 3."""

  exit_code = 3


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
  """Returns " (did you mean 'x'?)" for the closest candidate, or "" when none is close."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  return f" (did you mean '{close[0]}'?)" if close else ""


class ClusterFault(UserError):
  """A peer worker never came, died or stalled. Exit code 4: restart the whole job; it resumes from a checkpoint."""

  exit_code = 4


class Preempted(UserError):
  """SIGTERM: the state was saved at an update boundary. Exit code 42 (TF's restart code): relaunch to resume."""

  exit_code = 42
  label = "preempted"
