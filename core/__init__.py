"""Configuration, training loop, checkpoints, distributed setup and logging."""
