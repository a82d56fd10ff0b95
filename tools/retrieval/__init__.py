"""Global-descriptor search: exact chunked inner-product top-k (CPU or GPU) and a faiss option."""
