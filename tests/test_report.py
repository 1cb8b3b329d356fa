"""trainer.report: metrics.jsonl rendered to metrics.png, and a clear error without it."""

import json
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.processes import REPO
from trainer import report
from trainer.errors import UserError


def test_renders_one_panel_per_model_plus_eval_and_throughput(tmp_path):
  records = [{"update": u, "total_updates": 20, "phase": "a", "time": 0.0, "examples_per_sec": 100.0 + u,
              "eta_sec": 1.0, "a/loss": 1.0 / u, "b/loss": 2.0 / u} for u in (5, 10, 15, 20)]
  records.append({"update": 20, "eval/accuracy": 0.9, "eval/classes_drawn": 10})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert list(report.panels(records)) == ["a", "b", "eval", "throughput"]  # models, then eval, then examples/s
  assert report.panels(records)["a"]["a/loss"] == ([5, 10, 15, 20], [0.2, 0.1, 1 / 15, 0.05])
  path = report.render(str(tmp_path))
  picture = tf.io.decode_png(open(path, "rb").read())
  assert picture.shape[0] > 400 and picture.shape[1] > 400


def test_a_count_beside_scores_goes_on_a_second_axis():
  scores_and_count = {"eval/accuracy": ([1, 2], [0.5, 0.9]), "eval/diversity": ([1, 2], [0.8, 0.85]),
                      "eval/classes_drawn": ([1, 2], [4.0, 10.0])}
  assert report.split_axes(scores_and_count) == (["eval/accuracy", "eval/diversity"], ["eval/classes_drawn"])
  alike = {"a/loss": ([1], [0.7]), "a/accuracy": ([1], [0.2])}
  assert report.split_axes(alike) == (["a/accuracy", "a/loss"], [])


def _report(*code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_missing_metrics_file_is_one_clear_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "trainer.report", f"--model_dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      f"error: {tmp_path}/metrics.jsonl does not exist; `python -m trainer.main --model_dir={tmp_path} ...` writes it"]


def test_without_matplotlib_it_says_what_to_install(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"update": 1, "a/loss": 1.0}) + "\n")
  result = _report("import runpy, sys",
                   "sys.modules['matplotlib'] = None  # as if not installed: importing it raises ImportError",
                   f"sys.argv = ['report', '--model_dir={tmp_path}']",
                   "runpy.run_module('trainer.report', run_name='__main__')")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == ["error: trainer.report needs matplotlib: pip install matplotlib==3.11.2"]
  assert not (tmp_path / "metrics.png").exists()


@pytest.mark.parametrize("content, message", [
    ("", "holds no figures yet: the first is written after train.log_every updates"),
    ('{"update": 5, "a/loss": 1.0}\nnot json\n{"update": 10, "a/loss": 0.5}\n',
     r"metrics.jsonl:2 is not a JSON record \(Expecting value\); remove that line or use another --model_dir"),
    ('[1, 2]\n', r"metrics.jsonl:1 is not a trainer metrics record \(no 'update'\); remove that line"),
])
def test_an_empty_or_damaged_metrics_file_is_one_line(tmp_path, content, message):
  (tmp_path / "metrics.jsonl").write_text(content)
  with pytest.raises(UserError, match=message):
    report.render(str(tmp_path))


def test_a_record_cut_short_at_the_end_is_left_out(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"update": 5, "a/loss": 1.0}\n{"update": 10, "a/lo')
  assert report.render(str(tmp_path)).endswith("metrics.png")


@pytest.mark.parametrize("args, message", [
    ([], "error: flag --model_dir=None: Flag --model_dir must have a value other than None. (--helpshort lists the "
         "flags)"),
    (["--model_dir=/tmp", "extra"], "error: unexpected arguments: extra (flags take the form --name=value)"),
])
def test_a_missing_flag_or_a_stray_argument_is_one_line(args, message):
  result = subprocess.run([sys.executable, "-m", "trainer.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [message]
