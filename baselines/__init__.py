"""Cache-method adapters, one module per method (kv/ for KV-cache methods, semantic/ for response caches).

KV_METHODS is the registry: method name -> "module:Class" inside this package. Adding a method is one file
plus one line here; nothing is imported until the method is asked for.
"""

KV_METHODS: dict[str, str] = {
    "full": "kv.full:FullCache",
}
