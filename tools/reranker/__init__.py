"""Training the learned local re-ranker from feature stores: mining (mining.py), training pairs
(pairs.py), the trainer's task (task.py), held-out selection of the checkpoint and of lambda / gamma
(selection.py); tools/train_reranker.py is the command (docs/reranking.md)."""
