r"""Entry point: python -m trainer.main --gin_file=configs/X.gin --model_dir=DIR [flags].

Intentionally short: parse flags and gin, create the strategy, call trainer.train.train. Problems, a bad flag
included, print one line and exit with a documented code (WORKSPACE.md): 2 bad input, 3 non-finite loss, 4 a peer
worker missing, lost or stalled, 42 preempted (SIGTERM; state saved, relaunch to resume). Add --verbosity=1 for the
traceback.
"""

import time

from absl import app, flags, logging

from trainer import console

console.import_tensorflow_quietly()  # before anything imports TensorFlow: its start-up chatter is dropped

import gin  # noqa: E402

from trainer import config, strategy, train  # noqa: E402
from trainer.errors import UserError  # noqa: E402

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s); repeatable, later files win.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings 'NAME=VALUE'; repeatable, override files.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and metrics; reruns resume.")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(strategy.STRATEGIES), "tf.distribute strategy.")
_CPU_REPLICAS = flags.DEFINE_integer("cpu_replicas", 1, "Split the CPU into N logical devices and mirror over them.",
                                     lower_bound=1)
_STARTUP_TIMEOUT = flags.DEFINE_float("startup_timeout", 300, "Multi-worker: seconds to wait for every peer to start.")
_STALL_TIMEOUT = flags.DEFINE_float("stall_timeout", 600, "Seconds one compiled training call may take before the "
                                    "process exits with code 4 (a stalled peer); 0: no limit.")
flags.mark_flag_as_required("model_dir")
# Checked when the flags are parsed; console.parse_flags turns a failed check into one `error:` line and exit 2.
flags.register_validator("startup_timeout", console.positive_seconds, "must be a number of seconds > 0")
flags.register_validator("stall_timeout", lambda v: v == 0 or console.positive_seconds(v),
                         "must be a number of seconds > 0, or 0 for no limit")


def run() -> None:
  """Parses gin, creates the strategy and trains. Raises UserError on bad input."""
  if not _GIN_FILE.value:
    raise UserError("give at least one --gin_file, e.g. --gin_file=configs/smoke.gin")
  config.parse(_GIN_FILE.value, _GIN_BINDINGS.value)
  started = time.monotonic()
  distribution = strategy.make_strategy(_STRATEGY.value, _CPU_REPLICAS.value, _STARTUP_TIMEOUT.value)
  try:
    result = train.train(_MODEL_DIR.value, distribution, on_setup=config.write_operative_config,
                         stall_timeout=_STALL_TIMEOUT.value)
  except RuntimeError as e:
    if "Required bindings" in str(e):  # gin's message for a parameter marked gin.REQUIRED but never bound
      raise UserError(config.explain(e)) from e
    raise
  logging.info("done at update %d (%.1f s); the run is in %s", result.update, time.monotonic() - started,
               _MODEL_DIR.value)


def main(argv: list[str]) -> None:
  try:
    with console.exit_on_stop():
      if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
      run()
  finally:
    gin.clear_config()


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
