"""Training curves as a picture: python -m trainer.report --model_dir=DIR writes DIR/metrics.png.

Reads DIR/metrics.jsonl (written by trainer.main): one panel per phase with its figures over updates, one with the
evaluation figures, one with examples/s. Needs matplotlib, which only this module imports (training does not).
"""

import collections
import json
import os

from absl import app, flags

from trainer import console
from trainer.errors import UserError

MATPLOTLIB = "matplotlib==3.11.2"  # the version requirements.txt pins


def panels(records: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
  """{panel: {series: (updates, values)}}: one panel per phase ('<phase>/<figure>'), 'eval' and 'throughput'."""
  out = collections.defaultdict(lambda: collections.defaultdict(lambda: ([], [])))
  for r in records:
    for key, value in r.items():
      if not isinstance(value, (int, float)) or key in ("update", "total_updates", "time", "eta_sec"):
        continue
      panel = "throughput" if key == "examples_per_sec" else key.split("/")[0]
      updates, values = out[panel][key]
      updates.append(r["update"])
      values.append(value)
  # Models first (alphabetically), then the evaluation figures, then throughput.
  order = lambda panel: ({"eval": 1, "throughput": 2}.get(panel, 0), panel)
  return {panel: dict(out[panel]) for panel in sorted(out, key=order)}


def split_axes(series: dict[str, tuple[list[int], list[float]]], ratio: float = 10.0) -> tuple[list[str], list[str]]:
  """(left, right) series names: when the largest series is over `ratio` times the smallest (a count such as
  eval/classes_drawn of 0..10 beside 0..1 scores), the larger ones go on a second y axis so neither flattens."""
  size = {name: max((abs(v) for v in values), default=0.0) or 1e-12 for name, (_, values) in series.items()}
  names = sorted(series, key=size.get)
  if len(names) < 2 or size[names[-1]] <= ratio * size[names[0]]:
    return sorted(series), []
  # Split at the widest gap between consecutive sizes (on a log scale, as ratios).
  cut = max(range(1, len(names)), key=lambda i: size[names[i]] / size[names[i - 1]])
  return sorted(names[:cut]), sorted(names[cut:])


def _records(path: str) -> list[dict]:
  """metrics.jsonl's records; a line that is not a JSON object (a damaged file) is one UserError naming it. A last
  line cut short (a run killed while writing it) is left out."""
  with open(path, encoding="utf-8") as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  records = []
  for i, (n, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1 and not line.endswith("\n"):
        break
      raise UserError(f"{path}:{n} is not a JSON record ({e.msg}); remove that line or use another --model_dir") from e
    if not isinstance(record, dict) or not isinstance(record.get("update"), int):
      raise UserError(f"{path}:{n} is not a trainer metrics record (no 'update'); remove that line")
    records.append(record)
  return records


def render(model_dir: str) -> str:
  """Writes model_dir/metrics.png and returns its path."""
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist; `python -m trainer.main --model_dir={model_dir} ...` writes it")
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"trainer.report needs matplotlib: pip install {MATPLOTLIB}") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  groups = panels(_records(path))
  if not groups:
    raise UserError(f"{path} holds no figures yet: the first is written after train.log_every updates")
  figure, axes = plt.subplots(len(groups), 1, figsize=(8, 2.6 * len(groups)), squeeze=False, sharex=True)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (panel, series) in zip(axes[:, 0], groups.items()):
    left, right = split_axes(series)
    twin = ax.twinx() if right else None
    lines = []
    for i, name in enumerate(left + right):
      updates, values = series[name]
      on, label, style = (ax, name.split("/", 1)[-1], "-") if name in left else (
          twin, name.split("/", 1)[-1] + " (right axis)", "--")
      lines += on.plot(updates, values, label=label, color=colors[i % len(colors)], linestyle=style,
                       marker="." if len(updates) < 30 else None)
    ax.set_title(panel, loc="left", fontsize=10)
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="best")
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("update")
  figure.tight_layout()
  out = os.path.join(model_dir, "metrics.png")
  figure.savefig(out, dpi=100)
  return out


def main(argv: list[str]) -> None:
  with console.exit_on_stop():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
    print(render(flags.FLAGS.model_dir))


if __name__ == "__main__":
  # Defined here, not at import: trainer.main defines its own --model_dir, and tests import both modules.
  flags.DEFINE_string("model_dir", None, "The run's directory (holds metrics.jsonl).")
  flags.mark_flag_as_required("model_dir")
  app.run(main, flags_parser=console.parse_flags)
