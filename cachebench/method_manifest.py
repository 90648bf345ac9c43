"""What every registered method is and which parameters it takes, written out as plain data.

The method classes live beside torch (their modules import it), so asking them costs seconds. This manifest lets
the command line check a method name and its `--param name=value` settings, list the methods, and tell which
parameters are infrastructure, with nothing heavier than the standard library. tests/test_fast_feedback.py
compares it field by field with the real classes, so a parameter added to a class without its line here fails
the suite.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Literal

from cachebench.errors import unknown_name
from cachebench.kvcompress.budget import DEFAULT_RATIO
from cachebench.params import MAX_TOKENS, param, parse_params


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: as `cachebench.params.param` takes it, plus its name and annotated type."""

    name: str
    type: Any
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    infrastructure: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: `exclusive` names pairs of parameters that may not both be set."""

    name: str
    track: Literal["kv", "semantic"]
    summary: str
    params: tuple[ParamSpec, ...] = ()
    exclusive: tuple[tuple[str, str], ...] = ()


def _replace(params: tuple[ParamSpec, ...], **changed: ParamSpec) -> tuple[ParamSpec, ...]:
    """`params` with some entries swapped in place, as a subclass overriding an inherited field keeps its slot."""
    return tuple(changed.get(p.name, p) for p in params)


# cachebench.kvcompress.budget.BudgetParams: the eviction methods' shared size setting
BUDGET = (
    ParamSpec("ratio", float | None, None, f"fraction of the cache removed ({DEFAULT_RATIO} unless budget is set)",
              low=0.0, high=0.99),
    ParamSpec("budget", int | None, None, "absolute number of tokens kept per layer and head, instead of a ratio",
              low=1, high=MAX_TOKENS),
)
BUDGET_EXCLUSIVE = (("ratio", "budget"),)

# baselines/kv/snapkv.py SnapKVParams, which PyramidKV extends
SNAPKV = (
    *BUDGET,
    ParamSpec("window", int, 32, "observation window: the last tokens whose attention scores the rest (always kept)",
              low=1),
    ParamSpec("kernel", int, 7, "pooling kernel along the sequence (odd)", low=1),
    ParamSpec("pooling", str, "avg", "pooling of the window's attention", choices=("avg", "max")),
)

# cachebench.reuse: the tiered KV store of the reuse methods
STORE = (
    ParamSpec("device_mb", int, 2048, "device-memory tier capacity in MiB (0 disables it)", low=0,
              infrastructure=True),
    ParamSpec("cpu_mb", int, 8192, "CPU-memory tier capacity in MiB (0 disables it)", low=0,
              infrastructure=True),
    ParamSpec("disk_mb", int, 0, "local-disk tier capacity in MiB (0: off; blocks then do not outlive the run)",
              low=0, infrastructure=True),
    ParamSpec("disk_dir", str, "", "disk tier folder (default: <cache dir>/kvstore)", infrastructure=True),
)

# ChunkParams: reuse of non-prefix chunks (naive concatenation, KVLink, CacheBlend)
CHUNK = (
    *STORE,
    ParamSpec("chunking", str, "task", "chunk separator policy: the task's documents (the joiners between them are "
              "computed as new text; flat contexts are cut into fixed blocks), or always fixed blocks",
              choices=("task", "fixed")),
    ParamSpec("chunk_tokens", int, 256, "block size when a context is cut into fixed chunks", low=16),
    ParamSpec("precompute", bool, True, "encode an episode's missing chunks before its timed prefill, as the papers "
              "assume documents were encoded offline; false: misses are encoded inside the prefill"),
)

# cachebench.semantic SemanticParams: index, store and scope of every response cache
SEMANTIC = (
    ParamSpec("index", Literal["hnsw", "faiss", "exact"], "hnsw",
              "vector index: hnswlib HNSW, faiss HNSW, or exact brute force (the reference)"),
    ParamSpec("store", Literal["sqlite", "memory", "redis", "chroma"], "sqlite",
              "document store beside the in-memory index (sqlite, memory, redis server), or chroma: a remote "
              "vector-DB server holding vectors and documents", infrastructure=True),
    ParamSpec("scope", Literal["global", "user"], "global", "user: one partition per user; no user sees another's"),
    ParamSpec("candidates", int, 4, "nearest neighbours fetched per lookup (expired ones are skipped)", low=1),
    ParamSpec("hnsw_m", int, 16, "HNSW graph degree M", low=2),
    ParamSpec("hnsw_ef_construction", int, 200, "HNSW build-time candidate list", low=8),
    ParamSpec("hnsw_ef", int, 64, "HNSW search-time candidate list", low=1),
    ParamSpec("sqlite_path", str, "", "SQLite file for store=sqlite (default: a temporary file removed at the end)",
              infrastructure=True),
    ParamSpec("redis_url", str, "redis://127.0.0.1:6379/0", "Redis server for store=redis", infrastructure=True),
    ParamSpec("chroma_url", str, "http://127.0.0.1:8000", "Chroma server for store=chroma", infrastructure=True),
)

_METHODS = (
    # KV-cache methods: eviction and selection
    MethodSpec("full", "kv", "Uncompressed reference: every key and value is kept (quality and cost baseline)."),
    MethodSpec("streamingllm", "kv", "Attention sinks (first tokens) plus a recent window; no scoring (Xiao et al., "
               "2023).", (*BUDGET, ParamSpec("sinks", int, 4, "first tokens always kept (attention sinks)", low=0)),
               BUDGET_EXCLUSIVE),
    MethodSpec("h2o", "kv", "Heavy hitters by accumulated attention plus recent tokens, evicting while decoding too "
               "(Zhang et al., 2023).",
               (*BUDGET, ParamSpec("recent", float, 0.5, "fraction of the budget given to the most recent tokens "
                                   "(the rest: heavy hitters)", low=0.0, high=1.0)), BUDGET_EXCLUSIVE),
    MethodSpec("snapkv", "kv", "Observation-window attention, pooled, top-k per KV head; the window is kept (Li et "
               "al., 2024).", SNAPKV, BUDGET_EXCLUSIVE),
    MethodSpec("pyramidkv", "kv", "SnapKV scoring with pyramid-shaped per-layer budgets, largest at the bottom (Cai "
               "et al., 2024).",
               (*SNAPKV, ParamSpec("beta", float, 20.0, "steepness: the last layer keeps 1/beta of the average "
                                   "selected budget", low=1.0)), BUDGET_EXCLUSIVE),
    MethodSpec("cake", "kv", "Per-layer budgets from attention entropy and variance, sliced in a cascade during "
               "prefill; mean + variance eviction indicator (Qin et al., 2025).", (
                   *BUDGET,
                   SNAPKV[2],
                   ParamSpec("tau1", float, 1.0, "temperature of the spatial dispersion (entropy) in the layer "
                             "preference", low=0.001),
                   ParamSpec("tau2", float, 1.0, "temperature of the temporal shift (variance) in the layer "
                             "preference", low=0.001),
                   ParamSpec("gamma", float, 200.0, "weight of the attention variance in the eviction indicator",
                             low=0.0),
                   ParamSpec("kernel", int, 5, "average-pooling kernel of the eviction indicator along the sequence "
                             "(odd)", low=1),
               ), BUDGET_EXCLUSIVE),
    MethodSpec("windowkv", "kv", "Task-adaptive selection of whole token windows, indices shared within layer groups "
               "(Zuo et al., 2025).", (
                   *BUDGET,
                   ParamSpec("task_type", str, "auto", "localization: max scoring, window 32; aggregation: average, "
                             "window 16; auto: aggregation if the prompt asks for a summary",
                             choices=("auto", "localization", "aggregation")),
                   ParamSpec("review_window", int, 8, "consecutive tokens per review window (the unit that is kept "
                             "or dropped)", low=1),
                   ParamSpec("window", int | None, None, "observation window, always kept (default: 32 "
                             "localization, 16 aggregation)", low=1),
                   ParamSpec("group_size", int, 8, "consecutive layers sharing the first layer's selected indices",
                             low=1),
                   ParamSpec("beta", float, 14.0, "budget steepness across groups: the last group keeps "
                             "group_size/beta of the average selected budget (0: uniform)", low=0.0),
               ), BUDGET_EXCLUSIVE),
    MethodSpec("tokenselect", "kv", "Per-step token selection by per-head soft vote of Q.K, with a Selection Cache; "
               "the full cache is kept, attention uses the selected tokens (Wu et al., 2024).", (
                   *BUDGET,
                   ParamSpec("initial", int, 8, "first cache entries every decode step attends to (attention "
                             "sinks)", low=0),
                   ParamSpec("local", int, 32, "most recent entries every decode step attends to, the current token "
                             "included", low=1),
                   ParamSpec("similarity", float, 0.9, "Selection Cache: reuse the last selection while the query's "
                             "cosine similarity to the query that made it is at least this", low=-1.0, high=1.0),
                   ParamSpec("reuse", bool, True, "enable the Selection Cache"),
               ), BUDGET_EXCLUSIVE),
    MethodSpec("razorattention", "kv", "Retrieval heads (echo/induction probe) keep all; others sinks + window + "
               "compensation token (Tang 2024).", (
                   *BUDGET,
                   ParamSpec("sinks", int, 4, "first tokens every non-retrieval head keeps (attention sinks)",
                             low=0),
                   ParamSpec("induction", float, 0.14, "fraction of query heads with the highest induction score "
                             "kept whole", low=0.0, high=1.0),
                   ParamSpec("echo", float, 0.01, "fraction of query heads with the highest echo score kept whole",
                             low=0.0, high=1.0),
                   ParamSpec("probe_tokens", int, 128, "length of the random token sequence of the probe", low=2),
                   ParamSpec("probe_repeats", int, 4, "times the random sequence is repeated in the probe", low=2),
                   ParamSpec("seed", int, 0, "seed of the probe's random tokens"),
                   ParamSpec("min_window", int, 8, "smallest recent window of a non-retrieval head, whatever the "
                             "budget", low=0),
                   ParamSpec("spread", str, "model", "budget averaged over the whole model (one window for every "
                             "non-retrieval head, as in the paper) or per layer", choices=("model", "layer")),
               ), BUDGET_EXCLUSIVE),
    MethodSpec("epicache", "kv", "Episodic caches: block-wise prefill under a budget, one cache per conversation "
               "episode, questions routed to the nearest (Kim et al., 2025).", (
                   *BUDGET,
                   ParamSpec("block", int, 512, "block-wise prefill: tokens fed between two evictions", low=1),
                   ParamSpec("episodes", int, 4, "episodes (k-means clusters of the history), one compressed cache "
                             "each", low=1),
                   ParamSpec("segment_lines", int, 4, "utterances (non-empty lines) per embedded segment", low=1),
                   ParamSpec("medoids", int, 2, "segments nearest an episode's centroid that form its patched "
                             "prompt", low=1),
                   ParamSpec("patch_tokens", int, 256, "longest patched prompt, in tokens (its start is kept)",
                             low=1),
                   ParamSpec("recent", int, 16, "latest context tokens always kept", low=0),
                   ParamSpec("kernel", int, 7, "pooling kernel along the sequence for the patch's attention (odd)",
                             low=1),
                   ParamSpec("allocation", str, "sensitivity", "layer budgets: by measured sensitivity to eviction, "
                             "or uniform", choices=("sensitivity", "uniform")),
                   ParamSpec("alpha", float, 1.0, "sharpness of the sensitivity allocation (0: uniform above the "
                             "floor)", low=0.0, high=10.0),
                   ParamSpec("floor", float, 0.25, "least budget a layer gets, as a fraction of the uniform target",
                             low=0.0, high=1.0),
                   ParamSpec("calibration_tokens", int, 2048, "context tokens the sensitivity calibration runs on",
                             low=2),
                   ParamSpec("embedder", str, "embedded", "sentence-transformers model for segments and questions "
                             "(embedded: MiniLM)"),
                   ParamSpec("seed", int, 0, "k-means seed"),
               ), BUDGET_EXCLUSIVE),
    # KV-cache methods: reuse across requests
    MethodSpec("prefix", "kv", "reuse the longest stored prefix of hash-chained KV blocks from a device/CPU/disk "
               "store", (*STORE, ParamSpec("block_tokens", int, 64, "tokens per hashed block (vLLM uses 16, LMCache "
                                           "256)", low=1))),
    MethodSpec("naive-concat", "kv", "reuse stored chunk KV at re-encoded positions, no recompute (CacheBlend's "
               "full-reuse baseline)", CHUNK),
    MethodSpec("kvlink", "kv", "documents' KV encoded alone, concatenated with RoPE re-applied (training-free KVLink, "
               "no link tokens)", CHUNK),
    MethodSpec("cacheblend", "kv", "reuse stored chunk KV, recompute the most-deviating tokens from a check layer on "
               "(CacheBlend)", (
                   *CHUNK,
                   ParamSpec("recompute_ratio", float, 0.15, "share of reused tokens recomputed through the layers "
                             "after the check layer", low=0.0, high=1.0),
                   ParamSpec("check_layer", int, 1, "layer at which KV deviation selects the tokens to recompute "
                             "(layers up to it are computed for every token)", low=0),
               )),
    # semantic response caches
    MethodSpec("exact", "semantic", "serve only the same normalised text (a hash lookup)", SEMANTIC),
    MethodSpec("threshold", "semantic", "GPTCache-style: serve the nearest entry when cosine similarity >= one fixed "
               "threshold", (*SEMANTIC, ParamSpec("threshold", float, 0.8, "cosine similarity at or above which the "
                                                  "nearest entry is served", low=-1.0, high=1.0))),
    MethodSpec("category-aware", "semantic", "per-category threshold, TTL and quota (+ load-aware relaxation) over "
               "an in-memory index", (
                   *SEMANTIC,
                   ParamSpec("policy", str, "", "per-category policy: a YAML/JSON file or inline mapping {category: "
                             "{threshold, ttl, quota, relax, ttl_boost, cache}}, merged over the built-in defaults"),
                   ParamSpec("load", float, 0.0, "downstream model load, 0 (idle) to 1 (saturated)", low=0.0,
                             high=1.0),
                   ParamSpec("load_knee", float, 0.7, "load above which thresholds relax and TTLs stretch",
                             low=0.0, high=0.999),
               )),
    MethodSpec("vcache", "semantic", "vCache: per-entry sigmoid thresholds learnt online by exploring, serving "
               "within an error bound δ", (
                   *SEMANTIC,
                   ParamSpec("delta", float, 0.02, "user error bound δ: the largest acceptable probability that a "
                             "request is answered wrongly from the cache", low=1e-06, high=1.0),
                   ParamSpec("seed", int, 0, "seed of the exploration draws (u ~ U(0,1) per lookup)"),
               )),
    MethodSpec("meancache", "semantic", "MeanCache: per-user cache; a hit needs the query and its context chain "
               "(parent queries) to match", (
                   *_replace(SEMANTIC, scope=ParamSpec("scope", Literal["global", "user"], "user",
                                                       "user (MeanCache's design): one cache per user; global: "
                                                       "shared")),
                   ParamSpec("threshold", float, 0.83, "cosine similarity at or above which a cached query matches",
                             low=-1.0, high=1.0),
                   ParamSpec("context_threshold", float, 0.83, "cosine similarity each pair of ancestors needs for "
                             "the context chains to match", low=-1.0, high=1.0),
                   ParamSpec("context_depth", int, 0, "ancestors compared (parent first); 0: the whole chain",
                             low=0),
               )),
)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _METHODS}


def method_spec(name: str) -> MethodSpec:
    """The manifest entry of `name`, or the one-line unknown-name error with the closest names."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def _exclusive_check(pairs: tuple[tuple[str, str], ...]) -> Any:
    """A `__post_init__` refusing both of a pair, worded as BudgetParams words it."""

    def __post_init__(self: Any) -> None:
        for first, second in pairs:
            if getattr(self, first) is not None and getattr(self, second) is not None:
                raise ValueError(f"give {first} or {second}, not both")

    return __post_init__


@functools.cache
def params_class(name: str) -> type:
    """A frozen dataclass declaring `name`'s parameters as the real class does, so `parse_params` validates
    `--param` settings against it with the same messages, without importing the method."""
    spec = method_spec(name)
    fields = [(p.name, p.type, param(p.default, p.help, low=p.low, high=p.high, choices=p.choices,
                                     infrastructure=p.infrastructure)) for p in spec.params]
    namespace = {"__post_init__": _exclusive_check(spec.exclusive)} if spec.exclusive else {}
    return dataclasses.make_dataclass("ManifestParams", fields, frozen=True, namespace=namespace)


def check_params(name: str, assignments: list[str]) -> None:
    """Refuse an unknown method or a bad `--param` (UsageError, one line) before anything heavy is imported."""
    parse_params(params_class(name), assignments, owner=name)


def infrastructure_params(name: str) -> frozenset[str]:
    """The parameters of `name` declared `infrastructure`; empty for a name this version does not know."""
    spec = METHODS.get(name)
    return frozenset(p.name for p in spec.params if p.infrastructure) if spec else frozenset()


def effective_defaults(name: str) -> dict[str, Any]:
    """The parameters `name` runs with when none is given, as its rows record them: the declared defaults, with a
    budgeted method's ratio resolved (BudgetParams sets DEFAULT_RATIO when neither ratio nor budget is given).
    Tables compare a row's parameters with these to show only what was changed."""
    spec = method_spec(name)
    values = {p.name: p.default for p in spec.params}
    if ("ratio", "budget") in spec.exclusive and values.get("ratio") is None and values.get("budget") is None:
        values["ratio"] = DEFAULT_RATIO
    return values
