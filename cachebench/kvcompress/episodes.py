"""Episodes of a conversation: segments of utterances, embedded, clustered with k-means (EpiCache's first stage).

A history is cut into segments of `segment_lines` consecutive utterances (non-empty lines: the conversation tasks
write one utterance per line), each segment is embedded with a sentence encoder, and k-means groups the segments
into episodes. An episode is represented by its centroid (to route a question to it) and by the segments nearest
that centroid, its medoids, whose text becomes the "patched prompt" that scores the cache while the episode's own
compressed cache is built. Nothing here knows about models or caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...  # (n, d) unit vectors


@dataclass(frozen=True)
class Episodes:
    """The clustering of one history."""

    centroids: np.ndarray  # (episodes, d), unit length
    patches: tuple[str, ...]  # per episode: its medoid segments' text, in conversation order
    sizes: tuple[int, ...]  # segments per episode

    def route(self, question_vector: np.ndarray) -> int:
        """The episode whose centroid is nearest (cosine) to the question."""
        return int(np.argmax(self.centroids @ question_vector))


def segments_of(text: str, segment_lines: int) -> list[str]:
    """Consecutive groups of `segment_lines` non-empty lines (the last group may be shorter)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ["\n".join(lines[i : i + segment_lines]) for i in range(0, len(lines), segment_lines)]


def cluster_episodes(segments: list[str], encoder: TextEncoder, episodes: int, medoids: int, seed: int = 0
                     ) -> Episodes:
    """k-means (scikit-learn, k-means++ with 10 restarts) over the segments' embeddings."""
    if not segments:
        raise ValueError("no text to cluster into episodes")
    from sklearn.cluster import KMeans

    vectors = encoder.encode(segments)
    count = min(episodes, len(segments))
    labels = KMeans(n_clusters=count, n_init=10, random_state=seed).fit_predict(vectors) if count > 1 else \
        np.zeros(len(segments), dtype=int)
    centroids, patches, sizes = [], [], []
    for episode in range(count):
        members = np.flatnonzero(labels == episode)
        centroid = vectors[members].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        nearest = members[np.argsort(-(vectors[members] @ centroid))[:medoids]]
        centroids.append(centroid)
        patches.append("\n".join(segments[i] for i in sorted(nearest)))
        sizes.append(len(members))
    return Episodes(np.stack(centroids).astype(np.float32), tuple(patches), tuple(sizes))
