"""benchmarks.bench: the summary and report, and `--quick` end to end in child processes (no timing assertions)."""

import json

import pytest

from benchmarks import bench
from benchmarks import runs as bench_runs
from tests.processes import run

JOB = {"name": "big", "width": 8, "depth": 1, "global_batch_size": 8, "micro_batches": 2, "critic_updates": 2,
       "generator_updates": 1}


def _row(name, replicas, workers, examples_per_sec, job="big", **extra):
  return {"job": job, "name": name, "replicas": replicas, "workers": workers, "examples_per_sec": examples_per_sec,
          "ms_per_update": 1.0, **extra}


def _trainer(replicas, workers, examples_per_sec, critic=1, generator=1, job="big"):
  return _row("trainer", replicas, workers, examples_per_sec, job, allreduce_bytes_per_example=9.5, input_share=0.02,
              collectives_per_window={"critic": critic, "generator": generator})


def test_each_row_is_compared_with_trainer_on_its_own_topology():
  output = bench.summarize([
      {"rows": [_trainer(1, 1, 100.0, 0, 0), _row("keras_fit", 1, 1, 150.0)], "job": JOB, "tensorflow": "x"},
      {"rows": [_trainer(2, 1, 200.0), _row("naive", 2, 1, 50.0)], "job": JOB, "tensorflow": "x"},
      {"rows": [_trainer(2, 2, 80.0), _row("naive", 2, 2, 20.0)], "job": JOB, "tensorflow": "x"},
  ])
  assert [r["vs_trainer"] for r in output["rows"]] == [1.0, 1.5, 1.0, 0.25, 1.0, 0.25]
  # One replica has nothing to all-reduce (0 ops); the count comes from the multi-replica rows.
  assert output["collectives_per_window"] == 1
  assert output["jobs"]["big"]["allreduce_bytes_per_example"] == 9.5
  text = bench.report(output)
  assert ["keras_fit", "1", "1", "150", "1.0", "1.50"] in [line.split() for line in text.splitlines()]
  assert "trainer: 1 all-reduce per window per model" in text


def test_each_job_has_its_own_table_and_its_rows_compare_with_its_own_trainer():
  small = {**JOB, "name": "small", "width": 4}
  output = bench.summarize([
      {"rows": [_trainer(1, 1, 100.0), _row("naive", 1, 1, 50.0)], "job": JOB, "tensorflow": "x"},
      {"rows": [_trainer(1, 1, 10.0, job="small"), _row("naive", 1, 1, 20.0, job="small")], "job": small,
       "tensorflow": "x"},
  ])
  assert [(r["job"], r["name"], r["vs_trainer"]) for r in output["rows"]] == [
      ("big", "trainer", 1.0), ("big", "naive", 0.5), ("small", "trainer", 1.0), ("small", "naive", 2.0)]
  assert set(output["jobs"]) == {"big", "small"} and output["jobs"]["small"]["width"] == 4
  text = bench.report(output)
  assert "job 'big': GAN critic 2 : generator 1, MLPs 1 x 8" in text and "job 'small'" in text
  assert text.index("job 'small'") > text.index("naive") and bench.JOB_NAMES == list(bench_runs.JOBS)


def test_a_window_with_more_than_one_collective_is_reported_as_such():
  output = bench.summarize([{"rows": [_trainer(2, 1, 1.0, critic=1, generator=3)], "job": JOB, "tensorflow": "x"}])
  assert output["collectives_per_window"] == [1, 3]


def test_a_row_reports_its_fastest_variant_and_lists_them_all():
  row = bench.fastest({"jit_compile=False": _row("keras_fit", 1, 1, 10.0), "jit_compile=True": "failed: Error",
                       "other": _row("keras_fit", 1, 1, 12.0)})
  assert row["examples_per_sec"] == 12.0
  assert row["variants"] == {"jit_compile=False": 10.0, "jit_compile=True": "failed: Error", "other": 12.0}
  assert "variants" not in bench.fastest({"": _row("naive", 1, 1, 3.0)})


@pytest.mark.slow
def test_quick_benchmark_prints_the_table_and_writes_the_json(tmp_path):
  # The small job alone (the big one takes the same code paths with larger sizes, and twice the time)
  result = run("-m", "benchmarks", "--quick", "--jobs=small", f"--output={tmp_path / 'bench.json'}", timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "bench.json", encoding="utf-8") as f:
    output = json.load(f)
  rows = output["rows"]
  assert {r["job"] for r in rows} == {"small"}
  assert [(r["name"], r["replicas"], r["workers"]) for r in rows] == [
      ("trainer", 1, 1), ("keras_fit", 1, 1), ("naive", 1, 1), ("compute_bound", 1, 1),
      ("trainer", 2, 1), ("keras_fit", 2, 1), ("naive", 2, 1),
      ("trainer", 2, 2), ("naive", 2, 2), ("mwms_bound", 2, 2)]
  for r in rows:
    assert r["examples_per_sec"] > 0 and r["ms_per_update"] > 0 and r["vs_trainer"] > 0
    assert [r["name"], str(r["replicas"]), str(r["workers"]), f"{r['examples_per_sec']:.0f}"] in [
        line.split()[:4] for line in result.stdout.splitlines()]
  assert output["collectives_per_window"] == 1  # at 2 replicas and on 2 workers, for both models
  # 2 x 64 MLPs: critic 4,417 weights + 3 figures, generator 4,482 + 1, float32, over 2 updates of 64 examples.
  assert output["jobs"]["small"]["allreduce_bytes_per_example"] == pytest.approx(4 * (4420 + 4483) / (2 * 64))
  assert output["jobs"]["small"]["width"] == bench_runs.QUICK_JOBS["small"].width == 64
  assert 0 < rows[0]["input_share"] < 1


def test_each_variant_keeps_its_best_run_over_repeats_and_a_failure_only_if_it_never_ran():
  def run(name, label, row):
    return {"name": name, "label": label, "row": row}

  results = [{"runs": [run("trainer", "", _trainer(1, 1, 10.0)), run("compute_bound", "jit_compile=True", "failed: E"),
                       run("compute_bound", "jit_compile=False", _row("compute_bound", 1, 1, 5.0))],
              "job": JOB, "tensorflow": "x"},
             {"runs": [run("trainer", "", _trainer(1, 1, 12.0)), run("compute_bound", "jit_compile=True", "failed: E"),
                       run("compute_bound", "jit_compile=False", _row("compute_bound", 1, 1, 4.0))],
              "job": JOB, "tensorflow": "x"}]
  rows = bench.best_rows("1", results)["rows"]
  assert [(r["name"], r["replicas"], r["workers"], r["examples_per_sec"]) for r in rows] == [
      ("trainer", 1, 1, 12.0), ("compute_bound", 1, 1, 5.0)]
  assert rows[1]["variants"] == {"jit_compile=True": "failed: E", "jit_compile=False": 5.0}
  later = bench.best_rows("1", [{"runs": [run("naive", "", "failed: E"), run("naive", "", _row("naive", 1, 1, 2.0))],
                                 "job": JOB, "tensorflow": "x"}])
  assert later["rows"][0]["examples_per_sec"] == 2.0


def test_plan_lists_each_topologys_runs_without_tensorflow():
  assert bench.plan(1, 1, quick=True) == [("trainer", ""), ("keras_fit", "jit_compile=False"), ("naive", ""),
                                          ("compute_bound", "jit_compile=False")]
  assert [name for name, _ in bench.plan(2, 1, quick=False)] == ["trainer", "keras_fit", "naive"]
  assert bench.plan(2, 2, quick=False) == [("trainer", ""), ("naive", ""), ("mwms_bound", "calls of 50"),
                                           ("mwms_bound", "one call")]


def test_compare_puts_each_row_beside_the_same_row_of_an_earlier_run():
  before = bench.summarize([{"rows": [_trainer(1, 1, 100.0), _row("naive", 1, 1, 50.0)], "job": JOB,
                             "tensorflow": "x"}])
  now = bench.summarize([{"rows": [_trainer(1, 1, 250.0), _row("naive", 1, 1, 100.0), _row("keras_fit", 1, 1, 5.0)],
                          "job": JOB, "tensorflow": "x"}])
  lines = [line.split() for line in bench.compare(now, before).splitlines()]
  assert ["big", "trainer", "1", "1", "250", "100", "2.50x", "1.00", "1.00"] in lines  # a faster host ...
  assert ["big", "naive", "1", "1", "100", "50", "2.00x", "0.40", "0.50"] in lines  # ... and the ratio that tells
  assert ["big", "keras_fit", "1", "1", "5", "-", "-", "0.02", "-"] in lines  # a row the earlier run did not have
  assert not any("differs" in " ".join(line) for line in lines)
  changed = {**before, "jobs": {"big": {**before["jobs"]["big"], "width": 9}}}
  assert "note: job big differs from the earlier run's" in bench.compare(now, changed)
  # a file from before --jobs (rows without a job, one "job") compares as the big job
  old = {"rows": [{k: v for k, v in r.items() if k != "job"} for r in before["rows"]],
         "job": {k: v for k, v in JOB.items() if k != "name"}}
  assert ["big", "trainer", "1", "1", "250", "100", "2.50x", "1.00", "1.00"] in [
      line.split() for line in bench.compare(now, old).splitlines()]


def test_a_compare_file_that_is_not_a_benchmark_is_refused_before_running(tmp_path):
  (tmp_path / "x.json").write_text('{"a": 1}')
  result = run("-m", "benchmarks", f"--compare={tmp_path / 'x.json'}", timeout=120)
  assert result.returncode != 0 and "not a JSON file written by python -m benchmarks --output (it has no 'rows' list)" in (
      result.stdout + result.stderr)


def test_at_one_replica_only_the_report_says_there_is_nothing_to_count():
  output = bench.summarize([{"rows": [_trainer(1, 1, 100.0, 0, 0)], "job": JOB, "tensorflow": "x"}])
  assert output["collectives_per_window"] is None
  assert "trainer: nothing to all-reduce at 1 replica" in bench.report(output)
