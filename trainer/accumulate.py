"""Gradient accumulation over micro-batches: a pure function, local to one replica, with no communication."""

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

Objective = Callable[[Any], tuple[tf.Tensor, Mapping[str, tf.Tensor]]]
"""Maps a micro-batch to (scalar to differentiate, {name: scalar figure})."""


def accumulate_gradients(
    objective: Objective, variables: Sequence[tf.Variable], micro_batches: Sequence[Any]
) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
  """Sums d objective / d variables, and the objective's figures, over `micro_batches`.

  With one micro-batch this is a single gradient computation. With K > 1 the micro-batches are visited by a
  `tf.while_loop`, so the graph does not grow with K. A variable the objective does not reach gets a zero
  gradient, so that every model variable has a gradient of the same structure in every micro-batch.
  """

  def gradient(batch):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(variables)
      value, figures = objective(batch)
    grads = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [tf.convert_to_tensor(g) for g in grads], dict(figures)

  grads, figures = gradient(micro_batches[0])
  if len(micro_batches) == 1:
    return grads, figures

  rest = tf.nest.map_structure(lambda *xs: tf.stack(xs), *micro_batches[1:])

  def body(k, grads, figures):
    more_grads, more_figures = gradient(tf.nest.map_structure(lambda x: x[k], rest))
    return k + 1, [a + b for a, b in zip(grads, more_grads)], {n: figures[n] + more_figures[n] for n in figures}

  _, grads, figures = tf.while_loop(
      lambda k, *_: k < len(micro_batches) - 1, body, (tf.constant(0), grads, figures)
  )
  return grads, figures
