"""Gradient accumulation over micro-batches: a pure function, local to one replica, with no communication."""

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

Objective = Callable[[Any], tuple[Sequence[tf.Tensor], Mapping[str, tf.Tensor]]]
"""Maps a micro-batch to (one scalar to differentiate per variable group, {name: scalar figure}). Groups given the
same tensor are differentiated together, in one backward pass."""


def accumulate_gradients(
    objective: Objective, groups: Sequence[Sequence[tf.Variable]], micro_batches: Sequence[Any],
    on_unreached: Callable[[int], None] | None = None,
) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
  """Sums d objective[i] / d groups[i], and the objective's figures, over `micro_batches`.

  Returns the gradients flat, group after group. With one micro-batch this is a single gradient computation. With
  K > 1 the micro-batches are visited by a `tf.while_loop`, so the graph does not grow with K. A variable the
  objective does not reach gets a zero gradient, so that every variable has a gradient of the same structure in
  every micro-batch; `on_unreached(i)` is called (while tracing) for a group none of whose variables the objective
  reaches. Groups with their own scalar (several models each descending its own loss from one forward pass) each
  take a backward pass of their own from the same tape.
  """

  def gradient(batch):
    flat = [v for group in groups for v in group]
    # several groups may take several backward passes from one tape; one group, the plain tape of one model
    with tf.GradientTape(watch_accessed_variables=False, persistent=len(groups) > 1) as tape:
      tape.watch(flat)
      values, figures = objective(batch)
    # one backward pass per distinct scalar, over the variables of every group that descends it
    grads = {}
    for value in {id(v): v for v in values}.values():
      variables = [v for group, own in zip(groups, values) if own is value for v in group]
      grads.update(zip(map(id, variables), tape.gradient(value, variables)))  # None where not reached
    del tape
    for i, group in enumerate(groups):
      if on_unreached and group and all(grads[id(v)] is None for v in group):
        on_unreached(i)
    zero_if_none = lambda v, g: tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
    return [zero_if_none(v, grads[id(v)]) for v in flat], dict(figures)

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
