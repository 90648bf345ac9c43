"""`exact`: serve a stored response only for the same text after normalisation (case, whitespace, surrounding
punctuation) — a hash lookup, the floor any semantic cache must beat on hit rate and the ceiling on precision.

Entries still go into the index like any method's (so a remote store holds them the same way), but a hit comes
from the normalised-text table alone; the nearest neighbour is still searched, so scoring can tell a miss that a
semantic cache would have turned into a correct hit (FN) from one it would not (TN).
"""

from __future__ import annotations

import hashlib
import re

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
    summary = "serve only the same normalised text (a hash lookup)"

    def open(self, dim: int, namespace: str) -> None:
        super().open(dim, namespace)
        self._by_text: dict[str, int] = {}

    def lookup(self, query: Query) -> Decision:
        partition = self.partition_for(query)
        found = self.neighbours(query, k=1)
        key = self._by_text.get(text_key(partition, query.prompt))
        meta = self.meta.get(key) if key is not None else None
        if meta is not None:
            similarity = float(query.embedding @ query.embedding)  # the same text embeds to the same vector
            return self.serve(meta, similarity, query)
        return self.miss(found[0] if found else None, "no-exact-match")

    def record_miss(self, query: Query, response: str, decision: Decision) -> int | None:
        key = self.insert(query, response)
        self._by_text[text_key(self.partition_for(query), query.prompt)] = key
        return key
