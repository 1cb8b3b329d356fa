"""python -m benchmarks: trainer against Keras fit, the naive loop and the compute bound (benchmarks/bench.py)."""

from absl import app

from benchmarks import bench

if __name__ == "__main__":
  app.run(bench.main)
