"""A small regression job through the real `train` function, for the tests that compare runs."""

import functools

import keras
import numpy as np
import tensorflow as tf

from trainer import train
from trainer.tasks import models, regression
from trainer.schedule import Schedule


def strategy(replicas: int) -> tf.distribute.Strategy:
  """MirroredStrategy over the first `replicas` logical CPU devices (conftest makes 4).

  Each strategy gets its own collective keys: otherwise every strategy's first all-reduce is group 1, instance 100,
  and the runtime keeps the first shape it saw for that key, so a later run whose first collective has another
  shape fails ("Shape mismatch in the collective instance 100"). TensorFlow's own tests do the same
  (tensorflow/python/distribute/strategy_combinations.py)."""
  tf.distribute.MirroredStrategy._collective_key_base += 100_000  # pylint: disable=protected-access
  return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def run(model_dir, *, replicas=1, cycle=(("a", 1),), warmup=(), every=None, train_steps=6, global_batch_size=16,
        lr=0.05, optimizer="adam", **kwargs) -> train.Run:
  """Trains models 'a', 'b' and 'c' (small MLPs) on regression data; 'a' and 'c' with MSE, 'b' with MAE."""
  make_optimizer = {"adam": lambda: keras.optimizers.Adam(lr), "sgd": lambda: keras.optimizers.SGD(lr)}[optimizer]
  kwargs = {
      "models": {n: functools.partial(models.mlp, input_dim=4, output_dim=1, hidden=(8,), name=n) for n in "abc"},
      "optimizers": {n: make_optimizer for n in "abc"},
      "losses": {"a": regression.squared_error, "b": regression.absolute_error, "c": regression.squared_error},
      "examples": regression.regression_examples,
      "export_models": False,  # tests/test_export.py exports
      **kwargs,
  }
  for table in ("optimizers", "losses"):  # a test that gives its own models trains only those
    kwargs[table] = {n: f for n, f in kwargs[table].items() if n in kwargs["models"]}
  return train.train(str(model_dir), strategy(replicas), schedule=Schedule(cycle=list(cycle), warmup=list(warmup), every=every),
                     train_steps=train_steps, global_batch_size=global_batch_size, **kwargs)


def weights(run_: train.Run) -> dict[str, list[np.ndarray]]:
  return {n: [np.array(v) for v in m.trainable_variables] for n, m in run_.models.items()}


def max_diff(x: dict, y: dict) -> float:
  return max(float(np.max(np.abs(a - b))) for n in x for a, b in zip(x[n], y[n]))


# Losses of phases that train several of the toy's models (trainer.phase).
def _error(models, batch, name, power):
  return tf.reduce_mean(tf.abs(models[name](batch["x"], training=True) - batch["y"]) ** power, axis=1)


def summed_prediction_error(models, batch, trains) -> dict:
  """A joint loss that couples its models: the squared error of their predictions' sum."""
  prediction = tf.add_n([models[m](batch["x"], training=True) for m in trains])
  return {"loss": tf.reduce_mean(tf.square(prediction - batch["y"]), axis=1)}


def separable_joint(models, batch, trains) -> dict:
  """One loss: 'a''s squared error plus 'b''s absolute error (each model's gradient is its own loss's)."""
  assert trains == ("a", "b")
  return {"loss": _error(models, batch, "a", 2) + _error(models, batch, "b", 1)}


def per_model(models, batch, trains) -> dict:
  """Simultaneous updates: 'a' descends its squared error and 'b' its absolute error, from one call."""
  assert trains == ("a", "b")
  return {"loss/a": _error(models, batch, "a", 2), "loss/b": _error(models, batch, "b", 1)}


def phases(**forms) -> dict:
  """{name: phase} from name=(trains, loss) pairs."""
  from trainer.phase import phase  # pylint: disable=import-outside-toplevel
  return {name: phase(trains=trains, loss=loss) for name, (trains, loss) in forms.items()}
