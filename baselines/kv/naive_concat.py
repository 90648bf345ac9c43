"""`naive-concat`: reuse every chunk's stored KV as is, placed at its new positions, and compute nothing again.

This is the "full KV reuse" baseline of the CacheBlend paper (Yao et al., 2025, "CacheBlend: Fast Large Language
Model Serving for RAG with Cached Knowledge Fusion", EuroSys '25, arXiv:2405.16444), in the PromptCache line of
work: each chunk was encoded on its own behind the prompt's start, so its tokens never attended to the chunks that
now precede them. Its keys are rotated to the chunk's new RoPE positions; only the text around the chunks (the
prompt's start, the joiners, the end) and the question are computed. It is the lower bound CacheBlend improves on.
"""

from __future__ import annotations

from cachebench.reuse.chunks import ChunkReuseMethod


class NaiveConcat(ChunkReuseMethod):
    name = "naive-concat"
    summary = "reuse stored chunk KV at re-encoded positions, no recompute (CacheBlend's full-reuse baseline)"
