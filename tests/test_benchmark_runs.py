"""benchmarks.runs: each way of running the benchmark job, on a tiny job (figures only checked for sense)."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import runs as bench_runs
from tests import toy
from trainer.tasks import ring

# 1 x 8 MLPs, 2 micro-batches of 8: critic 2*8+8 + 8+1 = 33 weights, generator 2*8+8 + 8*2+2 = 42.
TINY = bench_runs.Job(width=8, depth=1, global_batch_size=8, micro_batches=2, warmup_cycles=1, timed_cycles=2)


def test_summed_gradients_are_the_gradient_of_the_mean_loss_over_the_window():
  nets, _ = bench_runs._build(TINY, tf.distribute.get_strategy())  # pylint: disable=protected-access
  window = ring.ring_examples(tf.range(16, dtype=tf.int64))
  halves = [{k: v[:8] for k, v in window.items()}, {k: v[8:] for k, v in window.items()}]
  grads, loss = bench_runs._summed_gradients(TINY, nets, "critic", halves)  # pylint: disable=protected-access
  with tf.GradientTape() as tape:
    mean = tf.reduce_mean(bench_runs.LOSSES["critic"](nets, window, "critic")["loss"])
  expected = tape.gradient(mean, nets["critic"].trainable_variables)
  assert len(grads) == 4
  for a, b in zip(grads, expected):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(loss.numpy(), mean.numpy(), rtol=1e-6)


@pytest.mark.slow
def test_trainer_row_counts_the_bytes_all_reduced_per_example():
  # One replica: the count of all-reduce ops is 0 (nothing to reduce). 2 replicas and 2 workers, where it is 1,
  # run in test_bench's child processes: a 2-replica strategy here would share collective instance keys with the
  # other tests' 2-replica strategies, whose tensors have other shapes.
  row = bench_runs.run_trainer(TINY, toy.strategy(1))
  assert row["collectives_per_window"] == {"critic": 0, "generator": 0}
  # (critic 33 weights + 3 figures, twice, + generator 42 + 1) float32 values per cycle of 3 x 16 examples
  assert row["allreduce_bytes_per_example"] == pytest.approx(4 * (2 * 36 + 43) / 48)
  assert row["timed_updates"] == 6 and row["examples_per_sec"] > 0
  assert row["ms_per_update"] == pytest.approx(1e3 * 16 / row["examples_per_sec"])


@pytest.mark.parametrize("run", [
    lambda: bench_runs.run_keras_fit(TINY, toy.strategy(1)),
    lambda: bench_runs.run_naive(TINY, toy.strategy(1)),
    lambda: bench_runs.run_compute_bound(TINY, jit_compile=True),
    lambda: bench_runs.run_compute_bound(TINY, jit_compile=True, while_loop=True),
    lambda: bench_runs.run_mwms_bound(TINY, toy.strategy(1)),  # one size of strategy per process (test_step)
    lambda: bench_runs.run_mwms_bound(TINY, toy.strategy(1), call_updates=4),
    lambda: bench_runs.input_seconds(TINY, toy.strategy(1)),
], ids=["keras_fit", "naive", "compute_bound", "compute_bound_while_loop", "mwms_bound", "mwms_bound_calls", "input"])
def test_the_other_ways_run_and_time_the_same_updates(run):
  row = run()
  if isinstance(row, float):  # input_seconds
    assert 0 < row < 60
    return
  assert row["timed_updates"] == 6
  assert row["ms_per_update"] == pytest.approx(1e3 * 16 / row["examples_per_sec"])
