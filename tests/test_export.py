"""trainer.export: the models written at the end of training load in plain Keras (and as a SavedModel) in a fresh
process and reproduce trainer's samples; on demand from a checkpoint; atomic."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import toy
from tests.processes import REPO, run
from trainer import config, export, train
from trainer.errors import UserError
from trainer.update import averaged_weights

_LATENT = 32  # configs/gan_digits_conv.gin's

# A fresh Python that knows nothing of trainer: plain Keras and TensorFlow load what trainer exported.
_LOAD = """
import json, sys
import numpy as np, keras, tensorflow as tf
directory, inputs = sys.argv[1], np.load(sys.argv[2])
generator = keras.saving.load_model(f"{directory}/generator.keras")
critic = keras.saving.load_model(f"{directory}/critic.keras")
serving = tf.saved_model.load(f"{directory}/generator").signatures["serving_default"]
served = list(serving(tf.constant(inputs)).values())[0].numpy()
np.save(sys.argv[3], np.stack([np.asarray(generator(inputs)), served]))
print(json.dumps({"trainer_imported": any(m.startswith("trainer") for m in sys.modules),
                  "critic_out": list(critic.output_shape),
                  "critic_layers": [type(l).__module__ for l in critic.layers]}))
"""


def _conv_gan_run(model_dir):
  """configs/gan_digits_conv.gin shrunk to 4 updates at 2 replicas, EMA on the generator, as trainer.main runs it
  (the operative config written at start, the export at the end)."""
  bindings = ["TRAIN_STEPS = 4", "conv_generator.channels = (8, 4)", "conv_critic.channels = (4, 8)",
              "train.evaluate = None", "generator/Adam.use_ema = True", "generator/Adam.ema_momentum = 0.5",
              "Adam.learning_rate = 0.01"]
  config.parse([os.path.join(REPO, "configs", "gan_digits_conv.gin")], bindings)
  return train.train(str(model_dir), toy.strategy(2), on_setup=config.write_operative_config)


@pytest.mark.slow
def test_the_exported_generator_reproduces_trainers_samples_in_plain_keras_and_trainer_export_rewrites_it(tmp_path):
  trained = _conv_gan_run(tmp_path)
  inputs = np.concatenate([np.random.RandomState(0).normal(size=(20, _LATENT)), np.eye(10)[np.arange(20) % 10]],
                          axis=1).astype(np.float32)
  generator = trained.models["generator"]
  raw = np.asarray(generator(inputs, training=False))
  with averaged_weights(trained.models, trained.optimizers):
    samples = np.asarray(generator(inputs, training=False))  # what trainer's evaluation draws: EMA weights
  assert np.abs(samples - raw).max() > 1e-3  # so the comparison below sees which weights were exported
  np.save(tmp_path / "inputs.npy", inputs)
  result = run("-c", _LOAD, str(tmp_path / "export"), str(tmp_path / "inputs.npy"), str(tmp_path / "out.npy"))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  loaded, served = np.load(tmp_path / "out.npy")
  assert np.abs(loaded - samples).max() <= 1e-6 and np.abs(served - samples).max() <= 1e-6
  assert not report["trainer_imported"] and report["critic_out"] == [None, 1]
  assert not any(m.startswith("trainer") for m in report["critic_layers"])  # trainer's Dropout left behind
  assert not [p for p in os.listdir(tmp_path) if p.startswith((".export-", "export.old-"))]
  # On demand, from the latest checkpoint: the same EMA weights again; the model not asked for stays.
  at_end = keras.saving.load_model(tmp_path / "export" / "generator.keras").get_weights()
  os.remove(tmp_path / "export" / "generator.keras")
  result = run("-m", "trainer.export", f"--model_dir={tmp_path}", "--model=generator")
  assert result.returncode == 0, result.stderr[-3000:]
  # trainer's two lines (restored, exported), nothing of TensorFlow's start-up, SavedModel writing or checkpoint
  assert [line.split("] ", 1)[-1].split(" ")[0] for line in result.stderr.splitlines()] == ["restored", "exported"]
  again = keras.saving.load_model(tmp_path / "export" / "generator.keras").get_weights()
  assert len(again) == len(at_end) and all(np.array_equal(a, b) for a, b in zip(at_end, again))
  assert os.path.exists(tmp_path / "export" / "critic.keras")
  with pytest.raises(UserError) as wrong:
    export.from_checkpoint(str(tmp_path), "generater")
  assert str(wrong.value) == (
      "--model=generater is not a model of this run (critic, generator) (did you mean 'generator'?)")


def test_a_failed_export_leaves_the_previous_one_in_place(tmp_path, monkeypatch):
  models = {n: toy.models.mlp(4, 1, (4,), name=n) for n in "ab"}
  export.write(models, {}, str(tmp_path))
  before = sorted(os.listdir(tmp_path / "export"))
  assert before == ["a", "a.keras", "b", "b.keras"]
  good = models["a"].get_weights()
  models["a"].set_weights([w + 1 for w in good])

  def fail(model, directory, name):
    raise OSError("disk full")

  monkeypatch.setattr(export, "_save", fail)
  with pytest.raises(OSError):
    export.write(models, {}, str(tmp_path), names=["a"])
  assert sorted(os.listdir(tmp_path)) == ["export"] and sorted(os.listdir(tmp_path / "export")) == before
  kept = keras.saving.load_model(tmp_path / "export" / "a.keras")
  assert all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), good))


def test_a_directory_without_a_run_is_one_line(tmp_path):
  with pytest.raises(UserError, match="operative_config.gin not found: give the --model_dir of a run"):
    export.from_checkpoint(str(tmp_path))


@pytest.mark.slow
def test_a_missing_flag_an_unknown_model_or_a_stray_argument_is_one_line(tmp_path):
  cli = lambda *args: subprocess.run([sys.executable, "-m", "trainer.export", *args], cwd=REPO, capture_output=True,
                                     text=True, timeout=120)
  missing = cli()
  assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == (
      "error: flag --model_dir=None: Flag --model_dir must have a value other than None. (--helpshort lists the flags)")
  stray = cli(f"--model_dir={tmp_path}", "generator")
  assert stray.returncode == 2 and stray.stderr.strip().splitlines()[-1] == (
      "error: unexpected arguments: generator (flags take the form --name=value)")
  nothing = cli(f"--model_dir={tmp_path / 'none'}")
  assert nothing.returncode == 2 and len(nothing.stderr.splitlines()) == 1 and nothing.stderr.strip().endswith(
      "operative_config.gin not found: give the --model_dir of a run trainer.main wrote")
