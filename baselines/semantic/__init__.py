"""Semantic response caches, one module per method (registered in cachebench.baselines.SEMANTIC_METHODS)."""
