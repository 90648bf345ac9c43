"""`meancache`: MeanCache's user-centric semantic cache (Gill et al., "MeanCache: User-Centric Semantic Caching
for LLM Web Services", arXiv 2403.02694), reimplemented from the paper's description.

Why: in a conversation the same words mean different things after different questions ("and in JavaScript?"
after "reverse a list in Python" or after "sort a dict in Python"), so a cache keyed on the query's embedding
alone serves follow-ups wrong answers. MeanCache keeps, with each cached query, its context chain — the
embeddings of the queries it followed — and a hit needs both the query and its chain to match (the paper's
contextual-query handling). It also keeps one cache per user, on the user's side (the "user-centric" design:
the cache of one user never answers another), so `scope` defaults to "user" here.

Hit rule as implemented: among the nearest entries of the user's partition (most similar first), serve the
first whose cosine similarity to the query is at least `threshold` and whose context chain matches the
query's: both chains cut to `context_depth` ancestors (0: the whole chain) have the same length, and each pair
of ancestors at the same depth has cosine similarity at least `context_threshold`. A standalone query (empty
chain) therefore never hits an entry cached for a follow-up, nor the other way round.

Provenance note: the abstract (local cache on each user's device; context chains encoded for every cached query
to tell contextual from standalone queries; federated training; 83% less storage from compressed embeddings) is
what could be checked while writing this; the defaults below are recalled from the paper's evaluation and are
worth re-checking against it.

Out of scope, and why:
- federated fine-tuning of the embedding model (the paper's main training contribution): the benchmark fixes the
  embedder for every method, so methods differ in their decisions only;
- the threshold learnt with it: `threshold` is a parameter, defaulting to 0.83, the value the paper reports as
  best for its own fine-tuned MPNet embedder (other embedders may need another value); `context_threshold`
  defaults to the same value;
- PCA compression of the stored embeddings (a storage and search-speed optimisation): its basis has to be
  fitted on embeddings the cache has not seen when the index is opened, which would make the index and every
  similarity depend on a warm-up sample this benchmark has no principled way to choose; it is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cachebench.params import param
from cachebench.semantic.method import Decision, Query, SemanticMethod, SemanticParams


@dataclass(frozen=True)
class MeanCacheParams(SemanticParams):
    scope: Literal["global", "user"] = param("user", "user (MeanCache's design): one cache per user; global: shared")
    threshold: float = param(0.83, "cosine similarity at or above which a cached query matches", low=-1.0, high=1.0)
    context_threshold: float = param(0.83, "cosine similarity each pair of ancestors needs for the context chains "
                                           "to match", low=-1.0, high=1.0)
    context_depth: int = param(0, "ancestors compared (parent first); 0: the whole chain", low=0)


def chains_match(cached: tuple[np.ndarray, ...], asked: tuple[np.ndarray, ...], depth: int, threshold: float) -> bool:
    """Whether two context chains (nearest ancestor first) match: same length after cutting to `depth` (0: no
    cut), and every pair of ancestors at the same depth at least `threshold` similar (unit vectors: a dot)."""
    if depth:
        cached, asked = cached[:depth], asked[:depth]
    if len(cached) != len(asked):
        return False
    return all(float(np.dot(a, b)) >= threshold for a, b in zip(cached, asked, strict=True))


class MeanCache(SemanticMethod):
    name = "meancache"
    summary = "MeanCache: per-user cache; a hit needs the query and its context chain (parent queries) to match"
    Params = MeanCacheParams

    def lookup(self, query: Query) -> Decision:
        found = self.neighbours(query)
        if not found:
            return self.miss(None)
        params = self.params
        note = "below-threshold"
        for meta, similarity in found:
            if similarity < params.threshold:
                break  # most similar first: the rest are below too
            if chains_match(meta.context, query.context, params.context_depth, params.context_threshold):
                return self.serve(meta, similarity, query)
            note = "context-mismatch"
        return self.miss(found[0], note)
