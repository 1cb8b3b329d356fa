"""trainer.main: the command line, end to end, its one-line errors, and replica invariance through --cpu_replicas."""

import json
import os

import pytest
import tensorflow as tf
from absl import flags

from tests import processes
from tests.processes import REPO
from trainer import main
from trainer.errors import UserError

SMOKE = os.path.join(REPO, "configs", "smoke.gin")


def run_in_process(*args):
  """Runs trainer.main's body with these flags in this process (fast: no TF start-up)."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainer.main", *args])
  main.run()


def run_cli(*args, timeout=300):
  return processes.run("-m", "trainer.main", *args, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--gin_bindings=trian.train_steps=3"], r"no configurable named 'trian' \(did you mean 'train'\?\)"),
    (["--gin_bindings=train.train_stepz=3"], r"'train' has no parameter 'train_stepz' \(did you mean 'train_steps'\?\)"),
    (["--gin_bindings=train.examples=@ring_exampels"], r"no configurable named 'ring_exampels' \(did you mean 'ring_examples'"),
    (["--gin_bindings=TRAIN_STEPS=0"], r"must be a positive integer, got 0"),
    (["--gin_bindings=Schedule.cycle=[('critc', 5), ('generator', 1)]"], r"'critc'.*did you mean 'critic'"),
    (["--gin_bindings=GLOBAL_BATCH_SIZE=33", "--cpu_replicas=2"], r"GLOBAL_BATCH_SIZE=33 does not divide over 2"),
    (["--gin_bindings=train.steps_per_loop = "], r"bad gin config"),
    (["--cpu_replicas=500"], r"^--cpu_replicas=500 is more than this host's \d+ cores can run .* use 2 or 4$"),
])
def test_bad_input_names_the_problem(tmp_path, args, message):
  with pytest.raises(UserError, match=message):
    run_in_process(f"--gin_file={SMOKE}", f"--model_dir={tmp_path}", *args)


def test_missing_gin_file_suggests_the_shipped_one(tmp_path):
  with pytest.raises(UserError, match=r"gin file not found: configs/smok.gin \(did you mean 'configs/smoke.gin'"):
    run_in_process("--gin_file=configs/smok.gin", f"--model_dir={tmp_path}")


def test_unset_required_value_is_named(tmp_path):
  config = tmp_path / "partial.gin"
  config.write_text("train.train_steps = 2\n")
  with pytest.raises(UserError, match=r"the config does not set train\.models"):
    run_in_process(f"--gin_file={config}", f"--model_dir={tmp_path / 'run'}")


@pytest.mark.parametrize("flag, message", [
    ("--cpu_replicas=0", r"flag --cpu_replicas=0: 0 is not a positive integer"),
    ("--startup_timeout=-5", r"flag --startup_timeout=-5.0: must be a number of seconds > 0$"),
    ("--startup_timeout=0", r"must be a number of seconds > 0$"),
    ("--startup_timeout=inf", r"must be a number of seconds > 0$"),
    ("--stall_timeout=-1", r"flag --stall_timeout=-1.0: must be a number of seconds > 0, or 0 for no limit"),
    ("--stall_timeout=nan", r"must be a number of seconds > 0, or 0 for no limit"),
])
def test_numeric_flags_out_of_range_are_refused_when_parsed(tmp_path, flag, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    run_in_process(f"--gin_file={SMOKE}", f"--model_dir={tmp_path}", flag)


def test_a_zero_stall_timeout_means_no_limit_and_is_accepted(tmp_path):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainer.main", f"--model_dir={tmp_path}", "--stall_timeout=0"])
  assert flags.FLAGS.stall_timeout == 0


@pytest.mark.slow
def test_user_errors_print_one_line_and_exit_2_without_traceback(tmp_path):
  # One line in all: TensorFlow's start-up chatter (oneDNN, no CUDA driver, "E0000 ... failed call to cuInit" on
  # a machine without a GPU) is not shown either.
  result = run_cli(f"--gin_file={SMOKE}", f"--model_dir={tmp_path}", "--gin_bindings=trian.x=1")
  assert result.returncode == 2
  assert "cuInit" not in result.stderr and "Traceback" not in result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("error: bad gin config: no configurable named 'trian'")


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path):
  result = run_cli(f"--gin_file={SMOKE}", f"--model_dir={tmp_path}", "--startup_timeout=-5")
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      "error: flag --startup_timeout=-5.0: must be a number of seconds > 0 (--helpshort lists the flags)"]


@pytest.mark.slow
def test_an_error_raised_while_a_step_is_traced_is_one_line_and_verbosity_1_adds_the_traceback(tmp_path):
  # Raised inside strategy.run, where TensorFlow's coordinator used to log the traceback (twice) before main saw it.
  args = [f"--gin_file={SMOKE}", "--gin_bindings=generator/mlp.input_dim=7"]
  result = run_cli(*args, f"--model_dir={tmp_path / 'quiet'}")
  assert result.returncode == 2, result.stderr[-3000:]
  expected = ("error: model 'generator' takes inputs of shape (7,), but the data gives (2,); set the model's "
              "input_dim to match the data (e.g. generator/mlp.input_dim = 2)")
  assert [l for l in result.stderr.splitlines() if not l.startswith("I")] == [expected], result.stderr[-3000:]
  verbose = run_cli(*args, f"--model_dir={tmp_path / 'verbose'}", "--verbosity=1")
  assert verbose.returncode == 2 and verbose.stderr.strip().splitlines()[-1] == expected
  assert verbose.stderr.count("Traceback (most recent call last)") >= 1


@pytest.mark.slow
def test_smoke_run_writes_everything_and_a_rerun_resumes(tmp_path):
  result = run_cli("--gin_file=configs/smoke.gin", f"--model_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "update 24/24 | phase generator |" in result.stderr and "examples/s | ETA" in result.stderr
  assert {"checkpoints", "summaries", "metrics.jsonl", "operative_config.gin"} <= set(os.listdir(tmp_path))
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-24")
  operative = (tmp_path / "operative_config.gin").read_text()
  assert "TRAIN_STEPS = 24" in operative and "critic/Adam.learning_rate" in operative
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["update"] for r in records if "critic/loss" in r] == [6, 12, 18, 24]
  assert {"eval/modes_covered", "eval/high_quality_fraction"} <= set(records[-1])
  assert "eval/samples" not in records[-1]  # pictures are files, not figures
  assert sorted(os.listdir(tmp_path / "samples")) == ["eval_samples_000012.png", "eval_samples_000024.png"]
  # The same command with more steps continues from update 24.
  more = run_cli("--gin_file=configs/smoke.gin", f"--model_dir={tmp_path}", "--gin_bindings=TRAIN_STEPS=30")
  assert more.returncode == 0, more.stderr[-3000:]
  assert "from update 24 of 30" in more.stderr
  # Other models than the checkpoint's: one line, and it is the last one (not followed by TensorFlow's warnings
  # about each value it could not restore).
  other = run_cli("--gin_file=configs/smoke.gin", f"--model_dir={tmp_path}", "--gin_bindings=TRAIN_STEPS=36",
                  "--gin_bindings=critic/mlp.hidden=(17, 16)")
  assert other.returncode == 2
  assert other.stderr.strip().splitlines()[-1].startswith("error: cannot restore checkpoint"), other.stderr[-3000:]


@pytest.mark.slow
def test_one_two_and_four_cpu_replicas_end_on_the_same_weights(tmp_path):
  # Each run is its own process: one strategy per process, as in production.
  weights = {}
  for replicas in (1, 2, 4):
    result = run_cli("--gin_file=configs/smoke.gin", "--gin_file=tests/equivalence.gin",
                     f"--model_dir={tmp_path / str(replicas)}", f"--cpu_replicas={replicas}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"on {replicas} replica(s)" in result.stderr
    weights[replicas] = processes.checkpoint_state(tmp_path / str(replicas))
  for replicas in (2, 4):
    diff = processes.max_diff(weights[1], weights[replicas])
    print(f"max |w(1 replica) - w({replicas} replicas)| = {diff:.3g}")
    assert diff <= 1e-6, (replicas, diff)


@pytest.mark.slow
def test_default_job_draws_every_digit_the_fixed_classifier_recognises(tmp_path):
  # The README's headline result (~30 s). Training is deterministic on CPU, so this is not flaky.
  result = run_cli("--gin_file=configs/gan_digits.gin", f"--model_dir={tmp_path}", timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  final = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
  assert final["update"] == 8000
  assert final["eval/classes_drawn"] == 10 and final["eval/accuracy"] >= 0.95, final
  assert final["eval/diversity"] >= 0.7, final
