"""The periodic actions' evaluation rules (trainer.actions): who runs which evaluation, and joined results."""

import pytest

from tests import toy
from trainer import actions
from trainer.errors import UserError


def _chief_only(models):
  return {"accuracy": 0.5}


def _distributed(models, strategy):
  return {"fcd": float(strategy.num_replicas_in_sync)}


@pytest.mark.parametrize("chief", [True, False])
def test_the_chief_runs_every_evaluation_and_the_others_only_those_that_take_the_strategy(chief):
  assert actions.takes_strategy(_distributed) and not actions.takes_strategy(_chief_only)
  results, everywhere = actions.run_evaluations(actions.evaluations([_chief_only, _distributed]), {}, {},
                                                toy.strategy(2), chief)
  assert results == ({"accuracy": 0.5, "fcd": 2.0} if chief else {"fcd": 2.0})
  assert everywhere == {"fcd"}


def test_one_figure_from_two_evaluations_is_one_line():
  with pytest.raises(UserError, match="two evaluations in train.evaluate report 'accuracy'"):
    actions.run_evaluations([_chief_only, _chief_only], {}, {}, toy.strategy(1), True)


def test_train_evaluate_may_be_one_function_a_list_or_nothing():
  assert actions.evaluations(None) == [] and actions.evaluations(_chief_only) == [_chief_only]
  assert actions.evaluations((_chief_only, _distributed)) == [_chief_only, _distributed]
