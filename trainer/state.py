"""The training state a checkpoint holds, and building it: every model and optimizer under the strategy."""

from typing import Callable, Mapping, NamedTuple

import keras
import tensorflow as tf

from trainer import dropout
from trainer.errors import UserError
from trainer.precision import LossScale, building
from trainer.precision import policies as precision_policies


class State(NamedTuple):
  """Everything a checkpoint holds: the models and their optimizers by name, the update and micro-batch counters
  that place the run in its schedule and its data, and the float16 models' loss scales."""

  models: dict[str, keras.Model]
  optimizers: dict[str, keras.optimizers.Optimizer]
  counters: dict[str, tf.Variable]
  loss_scales: dict[str, LossScale]


def build(strategy: tf.distribute.Strategy, factories: Mapping[str, Callable[[], keras.Model]],
          optimizer_factories: Mapping[str, Callable[[], keras.optimizers.Optimizer]], seed: int,
          precision: str | Mapping[str, str] = "float32") -> State:
  """Creates every model (in its dtype policy, trainer.precision) and optimizer, every optimizer's slots, the update
  and micro-batch counters and the float16 models' loss scales, under the strategy scope before any step (a
  checkpoint written before a model's first phase still holds its slots)."""
  policy = precision_policies(precision, sorted(factories))
  with strategy.scope():
    keras.utils.set_random_seed(seed)
    models, optimizers = {}, {}
    for name, factory in sorted(factories.items()):
      with building(policy[name]):
        try:
          model = factory()
        except (ValueError, TypeError) as e:  # Keras's own check of an impossible size (a layer of width 0, ...)
          first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
          raise UserError(f"train.models['{name}'] cannot be built: {first}; change the bindings of its builder "
                          f"(e.g. {name}/mlp.hidden)") from e
      if not isinstance(model, keras.Model) or not model.built or not model.trainable_variables:
        raise UserError(f"train.models['{name}'] must return a built keras.Model with trainable weights "
                        "(give it a keras.Input)")
      dropout.warn_correlated(name, model, strategy.num_replicas_in_sync)
      models[name] = model
    for name, factory in sorted(optimizer_factories.items()):
      optimizers[name] = factory()
      optimizers[name].build(models[name].trainable_variables)
    counters = {
        "update": tf.Variable(0, dtype=tf.int64, trainable=False, name="update"),
        "micro_batch": tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_batch"),
    }
    loss_scales = {name: LossScale(name) for name in models if policy[name] == "mixed_float16"}
  return State(models, optimizers, counters, loss_scales)
