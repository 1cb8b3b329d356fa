"""The evaluation benchmark's alternative computes the same distance as trainer (benchmarks.evaluation)."""

import gin
import pytest

from benchmarks import evaluation
from tests import toy
from trainer import config, frechet, state


# The initial generator's features have dead ReLU units: a singular covariance, on which scipy's sqrtm warns (what
# trainer.frechet.distance avoids); the figure is still the same.
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_the_naive_row_computes_trainers_distance_to_float32_rounding():
  config.parse([evaluation.CONFIG], ["FrechetDistance.samples = 1000"])
  run = gin.get_bindings("train")
  strategy = toy.strategy(1)
  models = state.build(strategy, run["models"], {}, seed=0).models
  fcd = [e for e in run["evaluate"] if isinstance(e, frechet.FrechetDistance)][0]
  real = fcd.real_statistics(fcd.features())
  assert evaluation._naive(fcd, models, real, 1000) == pytest.approx(fcd(models, strategy)["fcd"], rel=1e-4)  # pylint: disable=protected-access
