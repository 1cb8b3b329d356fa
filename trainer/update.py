"""A model's update from its all-reduced window gradient, run by every replica on its own copy of the variables.

Keras's `apply_gradients` does not fit after our own all-reduce: in the default (cross-replica) context it feeds
every device's update from replica 0's copy of the gradient (a broadcast per update on N GPUs), and in replica
context it all-reduces again and clips each replica's unreduced gradient. So each replica runs the optimizer's own
pieces itself, in Keras's order: clip (the summed window gradient, as one big batch on one device would), weight
decay, the per-variable `update_step`, constraints, the moving average. Model and slot variables are mirrored with
aggregation NONE, so these writes stay local, and they agree across replicas because every replica holds the same
reduced gradient (the collective's result). No merge_call may run here: this is compiled into one XLA program.
The optimizer's iteration count (ONLY_FIRST_REPLICA) is advanced by the caller, in cross-replica context.
"""

import contextlib
from typing import Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer.errors import UserError

# Optimizers that define their update through these methods cannot be taken apart as above (e.g. Keras's
# LossScaleOptimizer, which wraps another optimizer's apply).
_WHOLE_APPLY = ("apply", "apply_gradients", "_backend_apply_gradients", "_backend_update_step")


def check(name: str, optimizer: keras.optimizers.Optimizer) -> None:
  """Raises UserError when `optimizer` (of model `name`) uses an option or a method this update cannot honour."""
  if getattr(optimizer, "gradient_accumulation_steps", None):
    raise UserError(f"the optimizer of model '{name}' sets gradient_accumulation_steps; accumulate with the "
                    "schedule's micro_batches instead (e.g. Schedule.micro_batches = 4)")
  if getattr(optimizer, "loss_scale_factor", None):
    raise UserError(f"the optimizer of model '{name}' sets loss_scale_factor: not supported; remove it")
  base = keras.optimizers.Optimizer
  overridden = [m for m in _WHOLE_APPLY if getattr(type(optimizer), m, None) is not getattr(base, m, None)]
  if overridden:
    raise UserError(f"the optimizer of model '{name}' ({type(optimizer).__name__}) overrides {', '.join(overridden)}, "
                    "which trainer's per-replica update cannot call; set PhaseLoop.replica_update = False to apply it "
                    "with Keras's apply_gradients (no clipping options then)")


def check_keras_apply(name: str, optimizer: keras.optimizers.Optimizer) -> None:
  """For Keras's own apply after our all-reduce: clipping would be per replica there, so it is refused."""
  for option in ("clipnorm", "clipvalue", "global_clipnorm", "gradient_accumulation_steps"):
    if getattr(optimizer, option, None):
      raise UserError(f"the optimizer of model '{name}' sets {option}, which PhaseLoop.replica_update = False "
                      "cannot honour after trainer's all-reduce; remove it or use the per-replica update")


def clip(optimizer: keras.optimizers.Optimizer, grads: Sequence[tf.Tensor], norm: tf.Tensor) -> list[tf.Tensor]:
  """Keras's clipping options on the reduced gradient; `norm` is its global norm (computed once, also the finite
  check). As in Keras, clipnorm wins over global_clipnorm, which wins over clipvalue."""
  if optimizer.clipnorm:
    return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
  if optimizer.global_clipnorm:
    return tf.clip_by_global_norm(grads, optimizer.global_clipnorm, use_norm=norm)[0]
  if optimizer.clipvalue:
    return [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in grads]
  return list(grads)


def apply(optimizer: keras.optimizers.Optimizer, grads: Sequence[tf.Tensor], variables: Sequence) -> None:
  """Replica context: this replica's update of `variables` (Keras variables) with the already clipped `grads`."""
  lr = optimizer.learning_rate  # the model's own schedule at its own iteration count
  if optimizer.weight_decay is not None:
    for v in variables:
      if optimizer._use_weight_decay(v):  # pylint: disable=protected-access  (honours exclude_from_weight_decay)
        v.assign(v - v * tf.cast(optimizer.weight_decay, v.dtype) * tf.cast(lr, v.dtype))
  for g, v in zip(grads, variables):
    optimizer.update_step(g, v, lr)
  for v in variables:
    if v.constraint is not None:
      v.assign(v.constraint(v))
  if optimizer.use_ema:
    optimizer._update_model_variables_moving_average(variables)  # pylint: disable=protected-access
    if optimizer.ema_overwrite_frequency:
      overwrite = (optimizer.iterations + 1) % optimizer.ema_overwrite_frequency == 0
      averages = optimizer._model_variables_moving_average  # pylint: disable=protected-access
      for v, average in zip(variables, averages):
        v.assign(tf.where(overwrite, average.value, v.value))


def moving_statistics(model: keras.Model) -> list:
  """The moving statistics of `model`'s BatchNormalization layers (non-trainable variables its forward pass
  assigns). They are mirrored with aggregation NONE, so each replica's forward pass moves only its own copy; the
  step averages them over replicas in the window's all-reduce, so all copies stay equal (and checkpointed)."""
  return [v for layer in model._flatten_layers()  # pylint: disable=protected-access
          if isinstance(layer, keras.layers.BatchNormalization) for v in layer.non_trainable_variables]


def check_model(name: str, model: keras.Model, jit_compile: bool, micro_batches: int) -> None:
  """Raises UserError when model `name` has synchronised BatchNorm where its all-reduce cannot run: Keras's
  `synchronized=True` all-reduces through a merge_call, which fails inside an XLA program and inside trainer's
  accumulation loop (measured: it runs with `PhaseLoop.jit_compile = False` and 1 micro-batch per update)."""
  synced = [layer.name for layer in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
  if synced and (jit_compile or micro_batches > 1):
    raise UserError(f"model '{name}' has BatchNormalization(synchronized=True) ({', '.join(synced)}), which needs "
                    "PhaseLoop.jit_compile = False and 1 micro-batch per update; or drop synchronized")


def set_moving_statistics(model: keras.Model, values: Sequence[tf.Tensor]) -> None:
  """Replica context: sets `model`'s moving statistics to their replica mean `values` (a local write)."""
  for v, value in zip(moving_statistics(model), values):
    v.assign(value)


@contextlib.contextmanager
def averaged_weights(models: Mapping[str, keras.Model],
                     optimizers: Mapping[str, keras.optimizers.Optimizer]) -> Iterator[None]:
  """Within: every model whose optimizer keeps a moving average (`use_ema`) holds the averaged weights, as
  Keras's own evaluation after fit would; after: its raw weights again, bit for bit, so training continues from
  them. Cross-replica context: each assignment writes every local replica's copy."""
  swapped = []
  for name, model in models.items():
    optimizer = optimizers.get(name)
    if optimizer is not None and optimizer.use_ema:
      variables = model.trainable_variables
      swapped.append((variables, [np.array(v) for v in variables]))
      for v, average in zip(variables, optimizer._model_variables_moving_average):  # pylint: disable=protected-access
        v.assign(average)
  try:
    yield
  finally:
    for variables, raw in swapped:
      for v, value in zip(variables, raw):
        v.assign(value)
