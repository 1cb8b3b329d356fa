"""Mixed precision per model: Keras dtype policies at build time, and dynamic loss scaling for float16.

Variables stay float32 in every policy; the layers compute in float16 or bfloat16. bfloat16 has float32's range,
so it needs no loss scaling. float16 does: each micro-batch's loss is multiplied by the model's scale before
differentiation, and the window gradient is divided by it after trainer's all-reduce. A window whose *reduced*
gradient is not finite is skipped on every replica alike (the decision is taken on the same reduced values
everywhere, unlike Keras's LossScaleOptimizer, which decides on each replica's own unreduced gradient and keeps
replica 0's answer); the scale then halves, and it doubles after `growth_steps` good windows (Keras's defaults).
"""

import contextlib
from typing import Iterator, Mapping

import gin
import keras
import tensorflow as tf

from trainer.errors import UserError

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def policies(precision: str | Mapping[str, str], models: list[str]) -> dict[str, str]:
  """Each model's policy name: `precision` is one name for every model, or a dict from model name to a name."""
  table = dict.fromkeys(models, precision) if isinstance(precision, str) else dict(precision)
  for name, policy in table.items():
    if name not in models:
      raise UserError(f"train.precision names model '{name}', which is not in train.models ({', '.join(models)})")
    if policy not in POLICIES:
      raise UserError(f"train.precision for '{name}' is {policy!r}; choose one of {', '.join(POLICIES)} "
                      "(variables stay float32)")
  return {name: table.get(name, "float32") for name in models}


@contextlib.contextmanager
def building(policy: str) -> Iterator[None]:
  """Layers created within use `policy` (Keras reads the global policy when a layer is made)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


@gin.configurable(allowlist=["initial_scale", "growth_steps"])
class LossScale(tf.Module):
  """A float16 model's dynamic loss scale and its count of good windows since the last change (checkpointed)."""

  def __init__(self, name: str, initial_scale: float = 2.0**15, growth_steps: int = 2000):
    super().__init__(name=f"loss_scale_{name}")
    self.growth_steps = growth_steps
    self.scale = tf.Variable(float(initial_scale), trainable=False, dtype=tf.float32, name="scale")
    self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps")

  def next(self, finite: tf.Tensor) -> tf.Tensor:
    """Replica context, after a window: halve the scale on an overflow, double it after growth_steps good ones;
    returns the new scale. Local writes (aggregation NONE) that agree everywhere, since `finite` is decided on
    reduced values."""
    grow = finite & (self.good_steps + 1 >= self.growth_steps)
    self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), self.scale / 2.0))
    self.good_steps.assign(tf.where(finite & ~grow, self.good_steps + 1, tf.zeros_like(self.good_steps)))
    return self.scale.read_value()
