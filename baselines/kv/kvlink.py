"""`kvlink`: the training-free part of KVLink (Yang et al., 2025, "KVLink: Accelerating Large Language Models via
Efficient KV Cache Reuse", arXiv:2502.16002).

KVLink precomputes each document's KV cache independently — the document alone, from position 0, not behind any
prompt — stores the keys without their positional rotation, and at inference concatenates the documents' caches
and applies RoPE at each token's global position ("KV cache positional re-encoding"). The question and the text
around the documents are computed over the concatenated cache.

Out of scope, and why: KVLink's link tokens are trainable embeddings appended after each document, and its
mixed-data fine-tuning teaches the model to read independently encoded caches; both need training that the model
under test did not get, so this method measures what re-encoding alone achieves on an unmodified model (KVLink's
paper reports that an unmodified model loses accuracy this way; its trained variants recover it).
"""

from __future__ import annotations

from cachebench.reuse.chunks import ChunkReuseMethod


class KVLink(ChunkReuseMethod):
    name = "kvlink"
    summary = "documents' KV encoded alone, concatenated with RoPE re-applied (training-free KVLink, no link tokens)"
    encode_behind_head = False
