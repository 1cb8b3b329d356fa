r"""Benchmark: python -m benchmarks [--jobs=big,small] [--quick] [--output=FILE.json].

Times alternating jobs (benchmarks.runs: a GAN; `big`: critic 2 : generator 1, MLPs 3 x 512, K=8 micro-batches of
256 per update; `small`: the default job's sizes, critic 1 : generator 1, MLPs 2 x 256, K=1 of 64) run by this
project's trainer, by Keras `fit`, by the naive per-micro-batch loop and by the compute-only bound, at 1 and
2 MirroredStrategy replicas on logical CPU devices, and trainer vs the naive loop on 2 MultiWorkerMirroredStrategy
workers over loopback. Prints a table per job and writes (--output)

    {"rows": [{"job", "name", "replicas", "workers", "examples_per_sec", "ms_per_update", "vs_trainer", ...}, ...],
     "collectives_per_window": N, "jobs": {"big": {sizes..., "allreduce_bytes_per_example"}, ...}, "machine": ...}

Every run is a child process of its own (`--child`; one per worker on 2 workers): one process cannot create
MirroredStrategy over two device counts (collective keys clash), and a TensorFlow process slows down as it ages,
which would favour the row that runs first. Each row is the best of `--repeats` timed runs, taken in turn
(trainer, keras_fit, naive, ...), so a load change hits them alike. `--quick` shrinks the job to a smoke test
and runs each topology in one process; its figures are not the ones to quote.
"""

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app, flags, logging  # noqa: E402

from launch.local import free_ports, worker_env  # noqa: E402

TOPOLOGIES = {"1": (1, 1), "2": (2, 1), "2w": (2, 2)}  # name -> (replicas, workers)
STEPS_PER_LOOP = 50  # train.steps_per_loop's default: the updates of one compiled call in the trainer row
JOB_NAMES = ["big", "small"]  # benchmarks.runs.JOBS' keys, here so that the parent need not import TensorFlow

_QUICK = flags.DEFINE_bool("quick", False, "A small job and short timings: a smoke test, not figures to quote.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the results as JSON to this file.")
_JOBS = flags.DEFINE_list("jobs", JOB_NAMES, "Which jobs to time (benchmarks.runs.JOBS), one table each.")
_TOPOLOGIES = flags.DEFINE_list("topologies", list(TOPOLOGIES), "Which to run: 1 or 2 MirroredStrategy replicas "
                                "in one process ('1', '2'), 2 MultiWorkerMirroredStrategy workers ('2w').")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed runs per row, best kept (default: 1 with --quick, else 3).")
_INTRA = flags.DEFINE_integer("intra_op_threads", 0, "Threads per op (TF_NUM_INTRAOP_THREADS; 0: trainer's choice).")
_INTER = flags.DEFINE_integer("inter_op_threads", 0, "Ops run at once (TF_NUM_INTEROP_THREADS; 0: TensorFlow's).")
_JOB = {field: flags.DEFINE_integer(field, None, f"Override the job's {field} (benchmarks.runs.Job).")
        for field in ("width", "global_batch_size", "micro_batches", "critic_updates", "generator_updates",
                      "warmup_cycles", "timed_cycles")}
_COMPARE_JIT = flags.DEFINE_bool("compare_jit", False, "Add a trainer row with PhaseLoop.jit_compile the opposite "
                                  "of its 'auto' choice (XLA on CPU replicas).")
_COMPARE_SPAN = flags.DEFINE_bool("compare_span", False, "Add a trainer row whose calls end at every phase "
                                  "boundary (train.span_phases=False: trainer before one program ran the cycle).")
_COMPARE = flags.DEFINE_string("compare", None, "A JSON file an earlier run wrote with --output: also print each "
                                "row's change against it (examples/s, and its ratio to trainer, which hosts do not "
                                "change).")
_CHILD = flags.DEFINE_enum("child", None, list(TOPOLOGIES), "Internal: run one topology in this process.")
_CHILD_JOB = flags.DEFINE_enum("child_job", "big", JOB_NAMES, "Internal: the job the child runs.")
_CHILD_RUNS = flags.DEFINE_list("child_runs", [], "Internal: the child's runs, as row:variant.")
_CHILD_RESULT = flags.DEFINE_string("child_result", None, "Internal: the file the child writes its rows to.")


def plan(replicas: int, workers: int, quick: bool, compare_jit: bool = False,
         compare_span: bool = False) -> list[tuple[str, str]]:
  """The (row, variant) runs of one topology, in the order they run. A row with several variants reports its
  fastest; the parent computes this without importing TensorFlow."""
  # XLA is tried where it can run, except in --quick (it doubles the set-up time).
  jits = [False] if quick else [False, True]
  runs = [("trainer", "")]
  if compare_jit:
    runs.append(("trainer(jit_compile flipped)", ""))
  if compare_span:
    runs.append(("trainer(span_phases=False)", ""))
  if workers == 1:  # Keras fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585)
    # Over 2 devices, steps_per_execution > 1 fails in Keras 3.15 (a merge_call under the loop's tf.cond: "You
    # must feed a value for placeholder tensor", keras-team/keras#19246), and so does jit_compile=True.
    runs += [("keras_fit", f"jit_compile={jit}") for jit in (jits if replicas == 1 else [False])]
  runs.append(("naive", ""))
  if workers > 1:  # in calls as long as trainer's (train.steps_per_loop's default), and all in one call
    runs += [("mwms_bound", label) for label in [f"calls of {STEPS_PER_LOOP}", *([] if quick else ["one call"])]]
  if replicas == 1:
    runs += [("compute_bound", f"jit_compile={jit}") for jit in jits]
    if not quick:  # trainer's own way: the K micro-batches in a tf.while_loop, compiled with XLA
      runs.append(("compute_bound", "jit_compile=True/while_loop"))
  return runs


def _run(name: str, label: str, job, distribution) -> dict:
  """Runs one (row, variant) of `plan` in this process and returns its figures."""
  # The parent never imports TensorFlow.
  from benchmarks import runs as bench_runs  # pylint: disable=import-outside-toplevel
  from trainer.strategy import replicas_on_cpu  # pylint: disable=import-outside-toplevel

  jit = label.startswith("jit_compile=True")
  if name == "trainer":
    return bench_runs.run_trainer(job, distribution)
  if name == "trainer(span_phases=False)":
    return bench_runs.run_trainer(job, distribution, span_phases=False)
  if name.startswith("trainer("):
    flipped = replicas_on_cpu(distribution)  # the opposite of PhaseLoop's "auto": XLA on CPU, off on GPU
    return {**bench_runs.run_trainer(job, distribution, flipped), "jit_compile": flipped}
  if name == "keras_fit":
    return bench_runs.run_keras_fit(job, distribution, jit, None if distribution.num_replicas_in_sync == 1 else 1)
  if name == "naive":
    return bench_runs.run_naive(job, distribution)
  if name == "mwms_bound":
    return bench_runs.run_mwms_bound(job, distribution, STEPS_PER_LOOP if label.startswith("calls") else None)
  return bench_runs.run_compute_bound(job, jit, label.endswith("/while_loop"))


def fastest(by_label: dict) -> dict:
  """The fastest of a row's variants ({label: row, or the reason it failed}), listing all when there are several."""
  done = {label: row for label, row in by_label.items() if isinstance(row, dict)}
  row = dict(done[max(done, key=lambda label: done[label]["examples_per_sec"])])
  if len(by_label) > 1:
    row["variants"] = {label: r["examples_per_sec"] if isinstance(r, dict) else r for label, r in by_label.items()}
  return row


def child(topology: str, job_name: str, quick: bool, runs: list[tuple[str, str]]) -> dict:
  """Runs `runs` (row, variant) one after the other in this process; returns {"runs": [...], ...} for the parent.

  A variant that fails is reported as "failed: <error>" when its row has other variants, and raises otherwise.
  """
  # Read when the runtime starts; trainer.strategy.split_cpu and launch.local otherwise choose the intra-op threads.
  for variable, flag in (("TF_NUM_INTRAOP_THREADS", _INTRA), ("TF_NUM_INTEROP_THREADS", _INTER)):
    if flag.value:
      os.environ[variable] = str(flag.value)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from benchmarks import runs as bench_runs  # pylint: disable=import-outside-toplevel
  from trainer import strategy  # pylint: disable=import-outside-toplevel

  replicas, workers = TOPOLOGIES[topology]
  if workers > 1:
    distribution = strategy.make_strategy("multi_worker")  # reads TF_CONFIG
  else:
    distribution = strategy.make_strategy("mirrored", replicas)
  job = dataclasses.replace((bench_runs.QUICK_JOBS if quick else bench_runs.JOBS)[job_name],
                            **{field: flag.value for field, flag in _JOB.items() if flag.value is not None})
  variants = {}
  for name, _ in plan(replicas, workers, quick, _COMPARE_JIT.value, _COMPARE_SPAN.value):
    variants[name] = variants.get(name, 0) + 1
  results = []
  for name, label in runs:
    start = time.perf_counter()
    try:
      row = _run(name, label, job, distribution)
    except Exception as e:  # pylint: disable=broad-except  (an optional variant that fails is reported)
      if variants[name] == 1:
        raise
      logging.exception("%s %s failed", name, label)
      row = f"failed: {type(e).__name__}"
    else:
      logging.info("%s %s: %.0f examples/s (%.1f s with set-up)", name, label, row["examples_per_sec"],
                   time.perf_counter() - start)
      if name == "trainer":
        # The pipeline's time alone for the same micro-batches, as a share of trainer's time: what waiting for
        # input would cost if prefetching overlapped none of it (on 2 cores its CPU time is taken from the step).
        trainer_seconds = 1e-3 * row["ms_per_update"] * row["timed_updates"]
        row["input_share"] = bench_runs.input_seconds(job, distribution) / trainer_seconds
    results.append({"name": name, "label": label, "row": row})
  return {"runs": results, "job": {"name": job_name, **dataclasses.asdict(job)}, "tensorflow": tf.__version__}


def _run_topology(topology: str, job: str, runs: list[tuple[str, str]], flags_: list[str]) -> dict:
  """Runs `runs` of one topology in fresh child processes (one per worker); returns worker 0's result."""
  replicas, workers = TOPOLOGIES[topology]
  cluster = [f"127.0.0.1:{p}" for p in free_ports(workers)] if workers > 1 else []
  with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
    procs = []
    for i in range(workers):
      env = worker_env(cluster, i) if workers > 1 else dict(os.environ)
      args = [sys.executable, "-m", "benchmarks", f"--child={topology}", f"--child_job={job}",
              f"--child_runs={','.join(f'{name}:{label}' for name, label in runs)}",
              f"--child_result={os.path.join(tmp, f'{i}.json')}", *flags_]
      procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate()[0] for p in procs]
    failed = [f"worker {i} exited with {p.returncode}:\n{out[-3000:]}"
              for i, (p, out) in enumerate(zip(procs, outputs)) if p.returncode]
    if failed:
      raise RuntimeError(f"benchmark child {topology}: " + "\n".join(failed))
    with open(os.path.join(tmp, "0.json"), encoding="utf-8") as f:
      return json.load(f)


def best_rows(topology: str, results: list[dict]) -> dict:
  """One topology's child results (every run of every repeat) as {"rows": [...]}: each (row, variant)'s best
  run, then each row's fastest variant, in plan order."""
  replicas, workers = TOPOLOGIES[topology]
  by_name: dict[str, dict] = {}  # name -> label -> best row, or why it failed
  for result in results:
    for run in result["runs"]:
      labels = by_name.setdefault(run["name"], {})
      best, row = labels.get(run["label"]), run["row"]
      if best is None or (isinstance(row, dict) and (isinstance(best, str)
                                                     or row["examples_per_sec"] > best["examples_per_sec"])):
        labels[run["label"]] = row
  rows = [{"job": results[0]["job"]["name"], "name": name, "replicas": replicas, "workers": workers,
           **fastest(labels)} for name, labels in by_name.items()]
  return {"rows": rows, "job": results[0]["job"], "tensorflow": results[0]["tensorflow"]}


_HEAD = f"{'name':<26}{'replicas':>9}{'workers':>8}{'examples/s':>12}"


def _head(r: dict) -> str:
  """A row's first columns (under _HEAD), shared by `table` and `compare`."""
  return f"{r['name']:<26}{r['replicas']:>9}{r['workers']:>8}{r['examples_per_sec']:>12.0f}"


def table(rows: list[dict]) -> str:
  """The rows as an aligned text table."""
  lines = [f"{_HEAD}{'ms/update':>11}{'vs trainer':>12}"]
  for r in rows:
    lines.append(f"{_head(r)}{r['ms_per_update']:>11.1f}{r['vs_trainer']:>12.2f}")
  return "\n".join(lines)


def summarize(results: list[dict]) -> dict:
  """The children's results as the benchmark's JSON: rows with their ratio to trainer on the same job and topology."""
  rows = [dict(row) for result in results for row in result["rows"]]
  trainers = {(r["job"], r["replicas"], r["workers"]): r for r in rows if r["name"] == "trainer"}
  for row in rows:
    row["vs_trainer"] = row["examples_per_sec"] / trainers[row["job"], row["replicas"], row["workers"]]["examples_per_sec"]
  # All-reduce ops per window per model in trainer's traced step, where there is something to reduce (> 1 replica).
  counts = sorted({n for r in trainers.values() if r["replicas"] > 1 for n in r["collectives_per_window"].values()})
  jobs = {}
  for result in results:
    job = {k: v for k, v in result["job"].items() if k != "name"}
    bytes_ = next(r["allreduce_bytes_per_example"] for r in result["rows"] if r["name"] == "trainer")
    jobs[result["job"]["name"]] = {**job, "allreduce_bytes_per_example": bytes_}
  return {
      "rows": rows,
      "collectives_per_window": counts[0] if len(counts) == 1 else counts or None,
      "jobs": jobs,
      "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "tensorflow": results[0]["tensorflow"]},
  }


def report(output: dict) -> str:
  """A table per job and the notes under it, as printed."""
  machine, lines = output["machine"], []
  for name, job in output["jobs"].items():
    rows = [r for r in output["rows"] if r["job"] == name]
    lines += [f"job '{name}': GAN critic {job['critic_updates']} : generator {job['generator_updates']}, MLPs "
              f"{job['depth']} x {job['width']}, K={job['micro_batches']} micro-batches of G={job['global_batch_size']}"
              f" per update; best of {output.get('repeats', 1)}", table(rows)]
    shares = ", ".join(f"{r['input_share']:.1%} at {r['replicas']}r/{r['workers']}w" for r in rows if "input_share" in r)
    lines.append(f"trainer: {job['allreduce_bytes_per_example']:.0f} bytes all-reduced per example; the input "
                 f"pipeline alone takes {shares} of trainer's time")
    for r in rows:
      if "variants" in r:
        lines.append(f"{r['name']} at {r['replicas']}r/{r['workers']}w: " + ", ".join(
            f"{k}: {v:.0f} examples/s" if isinstance(v, float) else f"{k}: {v}" for k, v in r["variants"].items()))
  collectives = output["collectives_per_window"]
  lines.append(f"trainer: {collectives} all-reduce per window per model" if collectives is not None
               else "trainer: nothing to all-reduce at 1 replica (topologies 2 and 2w count the collectives)")
  lines.append(f"load average {machine.get('load_before', float('nan')):.1f} -> "
               f"{machine.get('load_after', float('nan')):.1f} on {machine['cpus']} CPUs")
  return "\n".join(lines)


def compare(output: dict, baseline: dict) -> str:
  """Each row of `output` beside the same (job, name, replicas, workers) row of `baseline`, an earlier run's JSON.

  Absolute examples/s moves with the host the VM lands on; the ratio to trainer on the same topology is the figure
  to compare across runs.
  """
  key = lambda r: (r.get("job", "big"), r["name"], r["replicas"], r["workers"])  # (runs before --jobs: big only)
  before = {key(r): r for r in baseline["rows"]}
  lines = [f"{'job':<7}{_HEAD}{'before':>10}{'change':>8}{'vs trainer':>12}{'before':>8}"]
  for r in output["rows"]:
    old = before.get(key(r))
    if old is None:
      lines.append(f"{r['job']:<7}{_head(r)}{'-':>10}{'-':>8}{r['vs_trainer']:>12.2f}{'-':>8}")
    else:
      lines.append(f"{r['job']:<7}{_head(r)}{old['examples_per_sec']:>10.0f}"
                   f"{r['examples_per_sec'] / old['examples_per_sec']:>7.2f}x{r['vs_trainer']:>12.2f}"
                   f"{old['vs_trainer']:>8.2f}")
  sizes = lambda jobs: {n: {k: v for k, v in j.items() if k != "allreduce_bytes_per_example"} for n, j in jobs.items()}
  earlier = sizes(baseline.get("jobs") or {"big": baseline.get("job", {})})
  differ = [n for n, job in sizes(output["jobs"]).items() if n in earlier and earlier[n] != job]
  if differ:
    lines.append(f"note: job {', '.join(differ)} differs from the earlier run's, so its rows do not compare like "
                 "with like")
  return "\n".join(lines)


def _load_baseline(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      baseline = json.load(f)
    if not isinstance(baseline, dict) or not isinstance(baseline.get("rows"), list):
      raise ValueError("it has no 'rows' list")
  except (OSError, ValueError) as e:
    raise app.UsageError(f"--compare={path}: not a JSON file written by python -m benchmarks --output ({e})") from e
  return baseline


def _time_topology(topology: str, job: str, repeats: int, flags_: list[str]) -> dict:
  """Every run of `plan` for one job and topology, `repeats` times; the best rows."""
  runs = plan(*TOPOLOGIES[topology], _QUICK.value, _COMPARE_JIT.value, _COMPARE_SPAN.value)
  if _QUICK.value:  # one process for all of a topology's runs: a smoke test, so set-up time matters more
    return best_rows(topology, [_run_topology(topology, job, runs, flags_) for _ in range(repeats)])
  # Every run in a fresh process, repeats taken in turn: a TensorFlow process slows down as it ages (allocator
  # state; measured in the README), which would favour whichever row runs first.
  results, failed = [], set()
  for _ in range(repeats):
    for run in runs:
      if run not in failed:
        results.append(_run_topology(topology, job, [run], flags_))
        failed.update((r["name"], r["label"]) for r in results[-1]["runs"] if isinstance(r["row"], str))
  return best_rows(topology, results)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CHILD.value:
    runs = [tuple(run.split(":", 1)) for run in _CHILD_RUNS.value]
    with open(_CHILD_RESULT.value, "w", encoding="utf-8") as f:
      json.dump(child(_CHILD.value, _CHILD_JOB.value, _QUICK.value, runs), f)
    return
  baseline = _load_baseline(_COMPARE.value) if _COMPARE.value else None  # first: a typo must not cost a run
  unknown = set(_TOPOLOGIES.value) - set(TOPOLOGIES)
  if unknown:
    raise app.UsageError(f"--topologies: unknown {sorted(unknown)}; choose from {', '.join(TOPOLOGIES)}")
  if set(_JOBS.value) - set(JOB_NAMES) or not _JOBS.value:
    raise app.UsageError(f"--jobs: choose from {', '.join(JOB_NAMES)}, got {','.join(_JOBS.value)}")
  repeats = _REPEATS.value or (1 if _QUICK.value else 3)
  flags_ = [f"--quick={_QUICK.value}", f"--intra_op_threads={_INTRA.value}", f"--inter_op_threads={_INTER.value}",
            f"--compare_jit={_COMPARE_JIT.value}", f"--compare_span={_COMPARE_SPAN.value}",
            *(f"--{field}={flag.value}" for field, flag in _JOB.items() if flag.value is not None)]
  load_before = os.getloadavg()[0]
  summaries = []
  for job in _JOBS.value:
    for topology in _TOPOLOGIES.value:
      start = time.perf_counter()
      summaries.append(_time_topology(topology, job, repeats, flags_))
      logging.info("job %s, topology %s took %.0f s", job, topology, time.perf_counter() - start)
  output = summarize(summaries)
  output.update(quick=_QUICK.value, repeats=repeats)
  output["machine"].update(load_before=load_before, load_after=os.getloadavg()[0])
  print(report(output))
  if baseline is not None:
    print(f"against {_COMPARE.value}:\n{compare(output, baseline)}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      json.dump(output, f, indent=1)

