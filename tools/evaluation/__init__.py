"""The evaluation of feature stores on any registered benchmark: the entry point (run.py), the
catalog of benchmarks (benchmarks.py), the evaluation methods beyond global and sv (methods/, one
module per family) and results.json (results_file.py)."""
