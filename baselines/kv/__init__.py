"""KV-cache methods: each module defines one KVMethod subclass."""
