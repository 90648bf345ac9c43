"""`exact`: serve a stored response only for the same text after normalisation (case, whitespace, surrounding
punctuation) — a hash lookup, the floor any semantic cache must beat on hit rate and the ceiling on precision.

It never embeds: a request's text is all it needs, so the runner computes no vector for it (its rows carry no
embedding cost) and its entries go into the document store only. Scoring still tells a miss that a semantic
cache could have turned into a correct hit (FN) from one it could not (TN): the runner judges that from the
entries the cache holds, not from a nearest neighbour. Chroma, which stores documents only beside vectors, is
refused.
"""

from __future__ import annotations

import hashlib
import re

from cachebench.errors import UsageError
from cachebench.semantic.method import Decision, Query, SemanticMethod

_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n.,;:!?\"'`"


def normalise(text: str) -> str:
    """Lowercase, collapse whitespace, strip punctuation at both ends."""
    return _SPACE.sub(" ", text.lower()).strip(_EDGE_PUNCTUATION)


def text_key(partition: str, text: str) -> str:
    """The table key of a normalised text in a partition: both fields length-prefixed before hashing, so no
    (partition, text) pair can spell another's bytes, whatever characters either holds."""
    digest = hashlib.blake2b(digest_size=16, person=b"cachebench.text")
    for field in (partition, normalise(text)):
        data = field.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class ExactCache(SemanticMethod):
    name = "exact"
    summary = "serve only the same normalised text (a hash lookup; never embeds)"
    uses_embeddings = False

    def open(self, dim: int, namespace: str) -> None:
        if self.params.store == "chroma":
            raise UsageError("exact with store=chroma: Chroma keeps documents only beside vectors, and the exact "
                             "cache stores none; use store=sqlite, memory or redis")
        super().open(dim, namespace)
        self._by_text: dict[str, int] = {}

    def lookup(self, query: Query) -> Decision:
        key = self._by_text.get(text_key(self.partition_for(query), query.prompt))
        meta = self.meta.get(key) if key is not None else None
        if meta is not None and (meta.expires is None or query.timestamp <= meta.expires):
            return self.serve(meta, 1.0, query)  # the same normalised text: similarity 1 by definition
        return self.miss(None, "no-exact-match")

    def record_miss(self, query: Query, response: str, decision: Decision) -> int | None:
        key = self.insert(query, response)
        self._by_text[text_key(self.partition_for(query), query.prompt)] = key
        return key
