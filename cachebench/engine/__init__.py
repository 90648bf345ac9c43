"""The KV engine: sessions that feed tokens through a model under a method, the runner, and measurement."""
