"""Benchmark-neutral evaluation and search: the method registry and the context interface every
benchmark offers (methods.py), the benchmark registry (benchmark.py) and one-image search."""
