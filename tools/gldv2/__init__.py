"""The Google Landmarks v2 retrieval benchmark: its context (EVAL.DATASET gldv2) and the Kaggle
mAP@100."""
