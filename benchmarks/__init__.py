"""trainer's benchmark, apart from the library: `python -m benchmarks` (see benchmarks/bench.py). Not in the image."""
