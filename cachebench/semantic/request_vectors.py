"""When a request's embedding is computed, and what it costs the request.

A real semantic cache embeds each request as it arrives, so the embedding is part of every request's latency
and varies from one request to the next (text length, a cold core, a micro-batch's size). `online` reproduces
that: requests are embedded when the runner reaches them, alone (`embed_batch` 1) or in the micro-batches of
`embed_batch` consecutive requests a serving system would form, and each request is charged the wall time of
the encode call it was part of (in a micro-batch every request waits for the whole batch). Nothing is
remembered: a text asked twice is embedded twice, as a cache without an embedding memo would.

`precomputed` is the fast option for large replays: the stream's distinct texts are embedded once, in batches,
before the first lookup, and every request is charged the batch's mean time per text (the same value on every
row; rows say which mode made them). `none` is for a method that keys by text alone: no vector, no cost.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cachebench.errors import UsageError
from cachebench.semantic.embedder import Embedder
from cachebench.semantic.stream import Request, Stream

EMBEDDINGS: tuple[str, ...] = ("online", "precomputed")
MAX_EMBED_BATCH = 4096


def check_embedding(embedding: str, embed_batch: int) -> None:
    """--embedding and --embed-batch, refused in one line when wrong."""
    if embedding not in EMBEDDINGS:
        raise UsageError(f"--embedding {embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
    if not 1 <= embed_batch <= MAX_EMBED_BATCH:
        raise UsageError(f"--embed-batch must be between 1 and {MAX_EMBED_BATCH}, got {embed_batch}")
    if embedding == "precomputed" and embed_batch != 1:
        raise UsageError("--embed-batch applies to --embedding online (precomputed embeds the whole stream in "
                         "the embedder's own batches)")


class RequestVectors:
    """Each request's vector and the embedding time charged to it, in one of the three modes."""

    def __init__(self, embedder: Embedder, mode: str, embed_batch: int = 1) -> None:
        self.embedder, self.mode, self.embed_batch = embedder, mode, embed_batch
        self._by_text: dict[str, np.ndarray] = {}  # precomputed
        self._by_id: dict[str, np.ndarray] = {}  # online: requests not looked up yet, and kept ancestors
        self._cost: dict[str, float] = {}  # online: request_id -> ms of its encode call, until taken
        self._mean_ms = 0.0
        self._keep: set[str] = set()  # online: request ids some later request names as its parent

    def prepare(self, stream: Stream) -> None:
        """Before the first lookup: precomputed embeds every distinct text; online embeds only the ancestors that
        are not looked up themselves (a pair file's main queries, which arrived before the stream began)."""
        if self.mode == "none":
            return
        everything = stream.all_requests()
        self._keep = {request.parent for request in everything if request.parent is not None}
        if self.mode == "precomputed":
            texts = list(dict.fromkeys(request.prompt for request in everything))
            vectors, self._mean_ms = self.embedder.encode_timed(texts)
            self._by_text = dict(zip(texts, vectors, strict=True))
            return
        ancestors = list(stream.ancestors.values())
        if ancestors:
            vectors = self.embedder.encode([request.prompt for request in ancestors])
            self._by_id.update((request.request_id, vector) for request, vector in zip(ancestors, vectors,
                                                                                       strict=True))

    def arrive(self, requests: Iterable[Request]) -> None:
        """Online: these requests arrived together (a micro-batch); embed them now and time the call."""
        if self.mode != "online":
            return
        batch = [request for request in requests if request.request_id not in self._by_id]
        if not batch:
            return
        vectors, per_text_ms = self.embedder.encode_timed([request.prompt for request in batch])
        elapsed_ms = per_text_ms * len(batch)  # the encode call's wall time (a replaying embedder's measured one)
        for request, vector in zip(batch, vectors, strict=True):
            self._by_id[request.request_id] = vector
            self._cost[request.request_id] = elapsed_ms

    def vector(self, request: Request) -> np.ndarray | None:
        if self.mode == "none":
            return None
        if self.mode == "precomputed":
            return self._by_text[request.prompt]
        if request.request_id not in self._by_id:  # reached outside a micro-batch: embed it alone
            self.arrive([request])
        return self._by_id[request.request_id]

    def done(self, request: Request) -> float:
        """The request is through: the embedding milliseconds charged to it; its vector is dropped unless a
        later request needs it as context."""
        if self.mode == "none":
            return 0.0
        if self.mode == "precomputed":
            return self._mean_ms
        if request.request_id not in self._keep:
            self._by_id.pop(request.request_id, None)
        return self._cost.pop(request.request_id, float("nan"))

    def batches(self, requests: list[Request]) -> Iterable[tuple[int, Request]]:
        """(position, request) over `requests`, embedding each micro-batch as the runner reaches it."""
        for start in range(0, len(requests), self.embed_batch):
            chunk = requests[start:start + self.embed_batch]
            self.arrive(chunk)
            yield from enumerate(chunk, start=start)
