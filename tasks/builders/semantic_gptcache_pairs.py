"""semantic.gptcache-pairs: the pair files GPTCache's benchmark (examples/benchmark in zilliztech/GPTCache)
evaluates on, from `--data FILE` only (they ship in that repository, not on the hub).

Two record shapes, both JSON arrays (a tar.gz or gzip of one, as GPTCache ships similiar_qqp.json.gz, is read too):

    mock_data.json, similiar_qqp.json:  [{"origin": "...", "similar": "..."}, ...]      every pair a paraphrase
    similiar_qqp_full.json:             [{"text_a": "...", "text_b": "...", "label": 0|1}, ...]

An origin/similar record may carry a "label" too (GPTCache users' sliced files do); without one it is 1. The
benchmark inserts every origin (text_a) and then asks every similar (text_b), as the pair protocol does. Classes
are built over the texts (semantic_pairs): GPTCache's mock_data.json repeats some origins verbatim, and the same
question is one class however often it recurs. Category "gptcache".

Knobs: pairs (default 0 = all), the first pairs kept in file order; --limit N lowers it.
"""

from __future__ import annotations

from cachebench.semantic.stream import Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, count_limit
from cachebench.tasks.builders.semantic_pairs import LabelledPair, pair_stream
from cachebench.tasks.builders.semantic_records import at, label_field, records, text_field

SHAPE = "GPTCache's pair (origin/similar or text_a/text_b/label)"
CATEGORY = "gptcache"


def build_stream(request: StreamRequest) -> Stream:
    """The file's pairs, origin inserted and similar looked up."""
    check_known(request.args, ("pairs",), "semantic_gptcache_pairs")
    limit = count_limit(request.args, "pairs", 0, "semantic_gptcache_pairs", request.limit)
    rows, where = records(request.data_path, SHAPE)
    pairs = []
    for index, row in enumerate(rows, start=1):
        place = at(where, index)
        if "text_a" in row or "text_b" in row:
            first, second = text_field(row, "text_a", place, SHAPE), text_field(row, "text_b", place, SHAPE)
            label = label_field(row, "label", place, SHAPE)
        else:
            first, second = text_field(row, "origin", place, SHAPE), text_field(row, "similar", place, SHAPE)
            label = label_field(row, "label", place, SHAPE) if "label" in row else 1
        pairs.append(LabelledPair(index, first, second, label))
    return pair_stream(CATEGORY, CATEGORY, pairs, where, limit)
