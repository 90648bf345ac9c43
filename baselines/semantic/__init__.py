"""Semantic response caches, one module per method (found by cachebench.registry; see cachebench.baselines)."""
