"""Exact k-nearest-neighbour search over global descriptors: the framework's ranking order, chunked
inner-product top-k (CPU or GPU, a faiss option) and the non-finite checks. The lowest search
layer: tools/rerank and tools/retrieval build on it (tests/test_import_rules.py)."""
