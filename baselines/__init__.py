"""Cache-method adapters, one module per method (kv/ for KV-cache methods, semantic/ for response caches).

A method is declared once, by its class (`name`, `summary`, `track`, `Params`); every KVMethod or SemanticMethod
subclass with a `name` that a module of kv/ or semantic/ defines is a built-in. Adding one is one file here and
`python -m cachebench.method_manifest --write`, which records it in cachebench/method_manifest.json so the command
line knows it without importing torch (cachebench.registry finds a file the manifest misses, by importing it).
"""
