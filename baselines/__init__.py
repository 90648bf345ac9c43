"""Cache-method adapters, one module per method (kv/ for KV-cache methods, semantic/ for response caches).

KV_METHODS and SEMANTIC_METHODS are the registry: method name -> "module:Class" inside this package. Adding a
method is one file plus one line here; nothing is imported until the method is asked for.
"""

KV_METHODS: dict[str, str] = {
    "full": "kv.full:FullCache",
    "streamingllm": "kv.streamingllm:StreamingLLM",
    "h2o": "kv.h2o:H2O",
    "snapkv": "kv.snapkv:SnapKV",
    "pyramidkv": "kv.pyramidkv:PyramidKV",
    "cake": "kv.cake:CAKE",
    "windowkv": "kv.windowkv:WindowKV",
    "tokenselect": "kv.tokenselect:TokenSelect",
    "razorattention": "kv.razorattention:RazorAttention",
    "epicache": "kv.epicache:EpiCache",
    "prefix": "kv.prefix:PrefixCache",
    "naive-concat": "kv.naive_concat:NaiveConcat",
    "kvlink": "kv.kvlink:KVLink",
    "cacheblend": "kv.cacheblend:CacheBlend",
}

SEMANTIC_METHODS: dict[str, str] = {
    "exact": "semantic.exact:ExactCache",
    "threshold": "semantic.threshold:ThresholdCache",
    "category-aware": "semantic.category_aware:CategoryAwareCache",
    "vcache": "semantic.vcache:VCache",
    "meancache": "semantic.meancache:MeanCache",
}
