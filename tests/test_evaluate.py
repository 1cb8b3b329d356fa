"""A run's evaluation outside training (trainer.evaluate): the figures logged in training, from the checkpoint, at
any replica or worker count; the --watch series; one-line errors."""

import json
import os

import gin
import pytest

from tests import toy
from tests.processes import run
from trainer import config, evaluate, train
from trainer.errors import UserError

# The default digits job, short; FCD over 2,000 samples (a smaller figure, the same code).
BINDINGS = ["TRAIN_STEPS = 100", "train.eval_every = 50", "train.checkpoint_every = 50", "train.log_every = 50",
            "FrechetDistance.samples = 2000", "train.export_models = False", "train.keep_best = 'eval/fcd'"]


def _logged(model_dir) -> dict[int, dict]:
  """The eval/ figures of each evaluation in metrics.jsonl, by update."""
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["update"]: {k: v for k, v in r.items() if k.startswith("eval/")} for r in records
          if any(k.startswith("eval/") for k in r)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A short run of configs/gan_digits.gin on 1 replica, as trainer.main runs it (config.gin written)."""
  model_dir = tmp_path_factory.mktemp("run")
  gin.clear_config()
  config.parse(["configs/gan_digits.gin"], BINDINGS)
  train.train(str(model_dir), toy.strategy(1), on_setup=config.write_operative_config)
  gin.clear_config()
  return model_dir


def _evaluator(model_dir, replicas: int, bindings=()) -> evaluate.Evaluator:
  evaluate.parse(str(model_dir), [], list(bindings))
  return evaluate.Evaluator(str(model_dir), toy.strategy(replicas))


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_standalone_figures_are_those_logged_in_training(trained, replicas):
  logged = _logged(trained)
  assert sorted(logged) == [50, 100] and logged[100]["eval/fcd"] > 0
  evaluator = _evaluator(trained, replicas)
  for update in (50, 100):
    path = evaluate.checkpoint_path(str(trained), update)
    figures = evaluate.figures(*evaluator.evaluate(path))
    assert figures["update"] == update and figures.keys() == {"update", *logged[update]}
    for name, value in logged[update].items():
      assert figures[name] == pytest.approx(value, rel=1e-6, abs=1e-12), (update, name)


def test_watch_writes_its_own_series_for_every_checkpoint(trained):
  last = evaluate.watch(_evaluator(trained, 1), str(trained), timeout=0)
  series = _logged(os.path.join(trained, evaluate.SERIES))
  assert sorted(series) == [50, 100] and last["update"] == 100
  assert os.listdir(os.path.join(trained, evaluate.SERIES, "summaries"))
  for update, figures in _logged(trained).items():
    assert series[update]["eval/fcd"] == pytest.approx(figures["eval/fcd"], rel=1e-6)


def test_the_best_checkpoint_is_found_by_its_number(trained):
  with open(os.path.join(trained, "best", "best.json"), encoding="utf-8") as f:
    best = json.load(f)
  logged = _logged(trained)
  assert best["value"] == min(f["eval/fcd"] for f in logged.values())
  path = evaluate.checkpoint_path(str(trained), best["update"])
  assert os.path.exists(f"{path}.index")


def test_a_missing_checkpoint_or_run_is_one_line(trained, tmp_path):
  with pytest.raises(UserError, match=r"--checkpoint=7: there is no ckpt-7 in .* \(it keeps 50, 100\)"):
    evaluate.checkpoint_path(str(trained), 7)
  with pytest.raises(UserError, match="config.gin not found: give the --model_dir of a run trainer.main wrote"):
    evaluate.parse(str(tmp_path), [], [])


@pytest.mark.slow
def test_two_workers_log_and_recompute_the_distance_of_one_replica(trained, tmp_path):
  """Training on 2 worker processes logs the 1-replica run's distance; the standalone command on 2 workers and on
  2 replicas prints the logged figure as its last line."""
  flags = ["--gin_file=configs/gan_digits.gin", *[f"--gin_bindings={b}" for b in BINDINGS]]
  multi = run("-m", "launch.local", "--num_workers=2", "--", f"--model_dir={tmp_path}", *flags)
  assert multi.returncode == 0, multi.stdout[-3000:]
  one, two = _logged(trained), _logged(tmp_path)
  for update in one:
    assert two[update]["eval/fcd"] == pytest.approx(one[update]["eval/fcd"], rel=1e-6), update
  for command in (["-m", "launch.local", "--num_workers=2", "--module=trainer.evaluate", "--"],
                  ["-m", "trainer.evaluate", "--cpu_replicas=2"]):
    done = run(*command, f"--model_dir={tmp_path}", "--checkpoint=50")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("[worker 0] "))
    assert printed["update"] == 50
    assert printed["eval/fcd"] == pytest.approx(two[50]["eval/fcd"], rel=1e-6)
