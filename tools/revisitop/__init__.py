"""The revisitop benchmark (ROxford5k, RParis6k, their +1M variants, any set with a gnd_<name>.pkl):
its context (context.py, registered as a benchmark), the E/M/H protocols, its metrics, validation
during training and the evaluation script (evaluate.py, a thin CLI of tools/evaluation/run.py)."""
