"""Shared machinery of the KV-compression methods: budgets, observation-window queries and their attention,
and pruning a cache layer to chosen tokens. Each method's own selection rule lives in its baselines/kv module."""
