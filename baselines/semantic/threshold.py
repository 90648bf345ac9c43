"""`threshold`: GPTCache-style semantic cache — serve the nearest stored prompt's response when its cosine
similarity reaches one fixed threshold, whatever the query's category.

This is the baseline every other semantic method is measured against; sweeping `threshold` gives its
hit-rate-versus-error-rate curve.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachebench.params import param
from cachebench.semantic.method import Decision, Query, SemanticMethod, SemanticParams


@dataclass(frozen=True)
class ThresholdParams(SemanticParams):
    threshold: float = param(0.8, "cosine similarity at or above which the nearest entry is served", low=-1.0,
                             high=1.0)


class ThresholdCache(SemanticMethod):
    name = "threshold"
    summary = "GPTCache-style: serve the nearest entry when cosine similarity >= one fixed threshold"
    Params = ThresholdParams

    def lookup(self, query: Query) -> Decision:
        found = self.neighbours(query)
        if not found:
            return self.miss(None)
        meta, similarity = found[0]
        if similarity >= self.params.threshold:
            return self.serve(meta, similarity, query)
        return self.miss(found[0], "below-threshold")
