"""trainer.config: every shipped configs/*.gin parses in a fresh process (it imports what it configures), binds the
run function completely and defines the documented macros; gin mistakes are one line."""

import glob
import importlib.util
import os

import gin
import pytest

from tests.processes import REPO, run
from trainer import config
from trainer.errors import UserError

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.gin")))


def test_there_are_configs():
  assert any(c.endswith("smoke.gin") for c in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_and_sets_the_contract(path):
  config.parse([path], [])
  assert isinstance(gin.query_parameter("%TRAIN_STEPS"), int)
  assert isinstance(gin.query_parameter("%GLOBAL_BATCH_SIZE"), int)
  for parameter in ("models", "optimizers", "examples", "schedule"):
    gin.query_parameter(f"train.{parameter}")  # raises if unbound
  bound = []
  for parameter in ("losses", "phases"):  # a schedule names models (train.losses) or phases (train.phases)
    try:
      bound.append(gin.query_parameter(f"train.{parameter}"))
    except ValueError:
      pass
  assert bound
  with open(path, encoding="utf-8") as f:
    head = f.read(1500)
  assert head.startswith("#") and "python -m trainer.main" in head  # says what it is and how to run it


def test_a_shorter_run_is_one_binding_away():
  config.parse([os.path.join("configs", "ring_gan.gin")], ["TRAIN_STEPS = 20"])
  assert gin.query_parameter("%TRAIN_STEPS") == 20


@pytest.mark.slow
def test_every_config_imports_the_modules_it_configures():
  # In a fresh process nothing but trainer.main's own imports is loaded, so a config that forgot an
  # `import trainer.tasks...` line fails here (in this process other tests have imported everything already).
  code = ("import sys; from trainer import config, main; "
          "assert not [m for m in sys.modules if m.startswith('trainer.tasks')], 'main imports a task'; "
          f"[(config.parse([p], []), __import__('gin').clear_config()) for p in {CONFIGS!r}]")
  result = run("-c", code, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("text, message", [
    ("import no_such_module_xyz\n", r"No module named 'no_such_module_xyz' \(.*x.gin:1: import no_such_module_xyz\); "
                                     r"fix the module name, or put its directory on PYTHONPATH"),
    ("train.models = {'a': @no_such_thing}\n", r"no configurable named 'no_such_thing' \(is the module that defines "
                                               r"it imported at the top of the gin file\?\)"),
])
def test_a_missing_module_or_import_is_one_line(tmp_path, text, message):
  (tmp_path / "x.gin").write_text(text)
  with pytest.raises(UserError, match=message):
    config.parse([str(tmp_path / "x.gin")], [])


def test_a_configurable_of_trainer_that_is_not_imported_names_its_module():
  assert config._import_hint("ns_critic_loss") == (  # pylint: disable=protected-access
      " (it is in trainer.tasks.gan: add `import trainer.tasks.gan` to the gin file)")


def test_a_users_gin_file_elsewhere_includes_a_shipped_config_with_the_checkout_on_sys_path(tmp_path, monkeypatch):
  # The checkout on sys.path (PYTHONPATH, or pytest's rootdir) makes its configs/ an importable namespace package;
  # gin's package reader, tried before any search path, then stopped with "expected str, ... not NoneType".
  monkeypatch.syspath_prepend(REPO)
  monkeypatch.chdir(tmp_path)
  assert importlib.util.find_spec("configs").origin is None  # the trap: a namespace package
  (tmp_path / "mine.gin").write_text("include 'configs/ring_gan.gin'\nTRAIN_STEPS = 7\n")
  config.parse(["mine.gin"], [])
  assert gin.query_parameter("%TRAIN_STEPS") == 7 and gin.query_parameter("train.models")


def test_an_include_of_a_file_that_is_nowhere_is_one_line(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(REPO)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.gin").write_text("include 'configs/ring_gann.gin'\n")
  with pytest.raises(UserError, match=r"^bad gin config: gin file not found: configs/ring_gann.gin \(mine.gin:1: "
                                      r"include 'configs/ring_gann.gin'\) \(did you mean 'configs/ring_gan.gin'\?\)$"):
    config.parse(["mine.gin"], [])
