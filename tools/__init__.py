"""Retrieval code (extraction, re-ranking, revisitop evaluation) and the thin scripts that run
it."""
