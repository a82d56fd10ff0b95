"""revisitop evaluation: the E/M/H protocols, the benchmark's metrics, the evaluation pipeline and
its CLI."""
