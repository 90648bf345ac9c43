"""`cachebench perf`: time and memory of KV methods on model shapes, against floors measured on the same device."""
