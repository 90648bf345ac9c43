"""semantic.paws: PAWS (Zhang et al. 2019), adversarial paraphrase pairs with high word overlap, as a pair
workload: "Flights from New York to Florida" / "Flights from Florida to New York" share every word and differ in
meaning, exactly the near-duplicate a fixed similarity threshold lets through.

Loaded from the HF hub as `google-research-datasets/paws`, config "labeled_final", split "test" (8,000 pairs);
`--data FILE` takes a local JSON/JSONL/Parquet/CSV file of the same record shape:

    {"id": 1, "sentence1": "...", "sentence2": "...", "label": 0}

label 1 = paraphrase (same class), 0 = not (different classes). Every sentence1 is inserted, every sentence2
looked up; classes are built over the texts of the whole split (semantic_pairs). Category "paws".

Knobs: pairs (default 0 = all; N keeps the first N in file order); --limit N keeps the first N.
"""

from __future__ import annotations

from cachebench.semantic.stream import Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, count_limit
from cachebench.tasks.builders.semantic_pairs import labelled_pairs, pair_stream
from cachebench.tasks.builders.semantic_records import records

HUB_DATASET, CONFIG, SPLIT = "google-research-datasets/paws", "labeled_final", "test"
SHAPE = "PAWS labeled_final's"
CATEGORY = "paws"
KEYS = ("sentence1", "sentence2", "label")


def build_stream(request: StreamRequest) -> Stream:
    """The PAWS pairs, sentence1 inserted and sentence2 looked up."""
    check_known(request.args, ("pairs",), "semantic_paws")
    limit = count_limit(request.args, "pairs", 0, "semantic_paws", request.limit)
    rows, where = records(request.data_path, SHAPE, hub_id=HUB_DATASET, split=SPLIT, config=CONFIG)
    return pair_stream(CATEGORY, CATEGORY, labelled_pairs(rows, where, KEYS, SHAPE), where, limit)
