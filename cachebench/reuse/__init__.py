"""KV reuse across requests: stored key/value blocks (prefix caching, tiered stores) and forwards that load them."""
