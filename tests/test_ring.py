"""trainer.tasks.ring: the data and the mode-collapse figures."""

import numpy as np
import tensorflow as tf

from trainer.tasks import ring


def test_data_lies_on_the_ring_modes():
  x = ring.ring_examples(tf.range(4000, dtype=tf.int64))["x"].numpy()
  figures = ring.quality(x, modes=8, radius=2.0, stddev=0.02, min_per_mode=20)
  assert figures["modes_covered"] == 8
  assert abs(figures["high_quality_fraction"] - (1 - np.exp(-4.5))) < 0.005  # mass of a 2-D Gaussian within 3 std
  assert figures["reverse_kl"] < 0.01


def test_a_collapsed_generator_covers_one_mode():
  samples = np.tile([[2.0, 0.0]], (2500, 1)) + 0.01
  figures = ring.quality(samples, modes=8, radius=2.0, stddev=0.02, min_per_mode=20)
  assert figures["modes_covered"] == 1
  np.testing.assert_allclose(figures["reverse_kl"], np.log(8), rtol=1e-6)


def test_samples_off_the_modes_are_not_high_quality():
  figures = ring.quality(np.zeros([100, 2]), modes=8, radius=2.0, stddev=0.02, min_per_mode=20)
  assert figures["high_quality_fraction"] == 0 and figures["modes_covered"] == 0
  assert "reverse_kl" not in figures  # undefined, not 0
