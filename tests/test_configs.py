"""Every shipped configs/*.gin parses, binds the run function completely, and defines the documented macros."""

import glob
import os

import gin
import pytest

from trainer import config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.gin")))


def test_there_are_configs():
  assert any(c.endswith("smoke.gin") for c in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_and_sets_the_contract(path):
  config.parse([path], [])
  assert isinstance(gin.query_parameter("%TRAIN_STEPS"), int)
  assert isinstance(gin.query_parameter("%GLOBAL_BATCH_SIZE"), int)
  for parameter in ("models", "optimizers", "losses", "examples", "schedule"):
    gin.query_parameter(f"train.{parameter}")  # raises if unbound
  with open(path, encoding="utf-8") as f:
    head = f.read(1500)
  assert head.startswith("#") and "python -m trainer.main" in head  # says what it is and how to run it


def test_a_shorter_run_is_one_binding_away():
  config.parse([os.path.join("configs", "ring_gan.gin")], ["TRAIN_STEPS = 20"])
  assert gin.query_parameter("%TRAIN_STEPS") == 20
