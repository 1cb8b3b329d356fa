"""How a run ends other than by finishing: one line for the user and a documented exit code (WORKSPACE.md).

`trainer.main` prints "<label>: <message>" for any `Stop` and exits with its code; anything else is a bug and keeps
its traceback. Only `UserError` means "change your input"; the others say what happened to the run.
"""

import difflib
from typing import Iterable


class Stop(Exception):
  """Ends the run with one line (`label: message`) and `exit_code`."""

  exit_code = 1
  label = "error"
  # Raised while a tf.function or tf.data function is traced (a dataset or a model shape is checked there):
  # without this, AutoGraph re-raises it as a StagingError holding a multi-line trace, and main cannot catch it.
  ag_pass_through = True


class UserError(Stop):
  """Bad input: a config, flag or file the user can change. Exit code 2."""

  exit_code = 2


class TrainingFailed(Stop):
  """Training stopped on a condition that is not a bug (a non-finite loss); the last good state is saved. Exit 3."""

  exit_code = 3


class ClusterFault(Stop):
  """A peer worker never came, died or stalled. Exit code 4: restart the whole job; it resumes from a checkpoint."""

  exit_code = 4


class Preempted(Stop):
  """A preemption signal: the state was saved at an update boundary. Exit code 42 (TF's restart code): relaunch."""

  exit_code = 42
  label = "preempted"


def check_count(name: str, value, minimum: int = 1) -> int:
  """Returns `value`, or raises UserError when it is not an integer >= `minimum` (bools are not counts)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise UserError(f"{name} must be {wanted}, got {value!r}")
  return value


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
  """Returns " (did you mean 'x'?)" for the closest candidate, or "" when none is close."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  return f" (did you mean '{close[0]}'?)" if close else ""
