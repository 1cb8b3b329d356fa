"""What a non-finite window does to the run: `train.on_nonfinite`.

'stop' (the default): the run stops before the window, saves the update before it and exits with code 3.
'skip': the window is not applied on any replica (no weight, slot, iteration count or BatchNorm statistic moves;
  the decision is taken on the all-reduced values, so every replica and worker takes it alike, as for a float16
  overflow) and training goes on with the next window; the update and the data it read count as done, so a
  resumed run stays bit for bit an uninterrupted one. Each skipped window is one line on the console and the
  figure `<phase>/nonfinite_skipped` (its share of the phase's updates in the interval) in metrics.jsonl and
  TensorBoard. The run still stops (exit 3, state saved) after `max_consecutive` skipped windows in a row, or when
  more than `max_share` of the last RECENT updates were skipped: then it is diverging, not meeting a bad batch.
No 'rollback' (restore the last checkpoint and continue): data is addressed by example index, so a replay meets
the same window again, and a rollback that then skips it is 'skip' with the updates since the checkpoint thrown
away; it helps only when the weights went bad before the window that shows it, which a lower learning rate
answers better. The consecutive count starts afresh when a run resumes.
"""

import collections

import gin
import numpy as np
from absl import logging

from trainer.errors import UserError, check_count

POLICIES = ("stop", "skip")
RECENT = 1000  # updates over which max_share is counted


@gin.configurable(denylist=["policy"])
class SkipGuard:
  """Counts the windows skipped under on_nonfinite='skip' and says when the run must stop anyway."""

  def __init__(self, policy: str = "stop", max_consecutive: int = 10, max_share: float = 0.05):
    if policy not in POLICIES:
      raise UserError(f"train.on_nonfinite = {policy!r}: use 'stop' or 'skip'")
    check_count("SkipGuard.max_consecutive", max_consecutive)
    if not 0 < max_share <= 1:
      raise UserError(f"SkipGuard.max_share must be a share in (0, 1], got {max_share!r}")
    self.skips = policy == "skip"
    self.max_consecutive, self.max_share = max_consecutive, max_share
    self.consecutive, self.total = 0, 0
    self._recent: collections.deque = collections.deque(maxlen=RECENT)

  def observe(self, figures: dict[str, np.ndarray], first_update: int) -> str | None:
    """Reads a call's figures (updates first_update + 1, ...); returns why the run must stop, or None."""
    flags = [(k.split("/")[0], v) for k, v in figures.items() if k.endswith("/nonfinite_skipped")]
    if not flags:
      return None
    skipped = np.fmax.reduce([np.nan_to_num(v) for _, v in flags]) > 0.5
    for i, bad in enumerate(skipped):
      self._recent.append(bool(bad))
      self.consecutive = self.consecutive + 1 if bad else 0
      if not bad:
        continue
      self.total += 1
      phase = next(p for p, v in flags if v[i] > 0.5)
      logging.warning("update %d (phase %s): non-finite loss or gradient, window skipped (train.on_nonfinite = "
                      "'skip'; %d in a row, %d in this run)", first_update + i + 1, phase, self.consecutive, self.total)
      if self.consecutive >= self.max_consecutive:
        return (f"{self.consecutive} non-finite windows in a row were skipped (SkipGuard.max_consecutive = "
                f"{self.max_consecutive})")
      if sum(self._recent) > self.max_share * RECENT:
        return (f"{sum(self._recent)} of the last {len(self._recent)} updates were non-finite windows, skipped "
                f"(SkipGuard.max_share = {self.max_share} of {RECENT})")
    return None
