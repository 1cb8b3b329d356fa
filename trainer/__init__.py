"""trainer: alternating multi-model training with gradient accumulation on tf.distribute."""
