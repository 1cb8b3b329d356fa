"""A phase: the models one update trains and the loss they descend. The schedule names phases (trainer.schedule).

Three forms, all one packed all-reduce per window (trainer.step):
  single     `trains = 'critic'`: one model, one loss (what a schedule entry naming a model means, with
             `train.losses[model]`).
  joint      `trains = ('g_ab', 'g_ba')` and a loss returning 'loss': one loss, its gradient for every trained
             model's variables, each model's own optimizer applying its part (CycleGAN's generators).
  per-model  `trains = ('generator', 'critic')` and a loss returning 'loss/generator' and 'loss/critic': each
             model descends its own loss, from one forward pass (simultaneous updates).
The loss is called as `loss(models, batch, trains)`, `trains` as the phase gives it: a model name for a
one-model phase (so every single-model loss is called exactly as before phases existed), a tuple for several.
"""

from typing import Any, Callable, Mapping, NamedTuple

import gin
import keras
import tensorflow as tf

from trainer.errors import UserError, check_count, did_you_mean

LossFn = Callable[[Mapping[str, keras.Model], Any, Any], Mapping[str, tf.Tensor]]
"""Maps (all models by name, a per-replica micro-batch, the phase's `trains`) to {figure: values, shape [b]}.

The figure "loss" is the one differentiated (or "loss/<model>", one per trained model); every figure is reported
as its mean over the window's global batch.
"""


class Phase(NamedTuple):
  """Phase `name` trains `models` with `loss`; `target` is what the loss receives as its third argument."""

  name: str
  models: tuple[str, ...]
  loss: LossFn
  target: str | tuple[str, ...]
  micro_batches: int | None = None

  @property
  def joint(self) -> bool:
    return len(self.models) > 1


@gin.configurable
def phase(trains: str | tuple[str, ...] = gin.REQUIRED, loss: LossFn = gin.REQUIRED,
          micro_batches: int | None = None) -> Phase:
  """A phase for `train.phases` (named there): which model(s) it `trains`, with which `loss`, and optionally its
  own K micro-batches per update (a schedule entry's K wins; Schedule.micro_batches applies to neither)."""
  return Phase("", trains if isinstance(trains, tuple) else (trains,), loss,
               tuple(trains) if isinstance(trains, (tuple, list)) else trains, micro_batches)


def resolve(names: list[str], phases: Mapping[str, Phase], models: Mapping[str, Any],
            losses: Mapping[str, LossFn], optimizers: Mapping[str, Any]) -> dict[str, Phase]:
  """The phase of every schedule entry name: `phases[name]`, or for a model's name today's one-model phase with
  `losses[name]`. Raises UserError naming the binding to change."""
  resolved = {}
  for key, spec in phases.items():
    if not isinstance(spec, Phase):
      raise UserError(f"train.phases['{key}'] must be a phase, e.g. @{key}/phase(), got {spec!r}")
  for name in names:
    if name in phases:
      spec = phases[name]
      if not spec.models or len(set(spec.models)) != len(spec.models):
        raise UserError(f"{name}/phase.trains = {spec.target!r}: name each model once")
      if spec.micro_batches is not None:
        check_count(f"{name}/phase.micro_batches", spec.micro_batches)
      for model in spec.models:
        if not isinstance(model, str) or model not in models:
          raise UserError(f"{name}/phase.trains names '{model}', which is not in train.models "
                          f"({', '.join(models)}){did_you_mean(str(model), models)}")
      resolved[name] = spec._replace(name=name)
    elif name in models:
      if name not in losses:
        raise UserError(f"model '{name}' is trained by the schedule but has no entry in train.losses "
                        f"(or name a phase of train.phases)")
      resolved[name] = Phase(name, (name,), losses[name], name)
    else:
      known = [*phases, *models]
      raise UserError(f"the schedule names '{name}', which is neither a phase of train.phases nor a model of "
                      f"train.models ({', '.join(known)}){did_you_mean(name, known)}")
    for model in resolved[name].models:
      if model not in optimizers:
        raise UserError(f"model '{model}' is trained by the schedule but has no entry in train.optimizers")
  return resolved
