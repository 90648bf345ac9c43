"""semantic.qqp: Quora Question Pairs from GLUE as a pair workload (the data GPTCache's benchmark and MeanCache
evaluate semantic caches on).

Loaded from the HF hub as `nyu-mll/glue`, config "qqp", split "validation" (40,430 labelled pairs); `--data FILE`
takes a local JSON/JSONL/Parquet/CSV file of the same record shape:

    {"question1": "How do I ...?", "question2": "What is the way to ...?", "label": 1, "idx": 17}

or of Kaggle's release of the same data (its train.csv, 404,290 pairs):

    id,qid1,qid2,question1,question2,is_duplicate

whose `is_duplicate` is the label when `label` is absent. Kaggle's file holds a few pairs with an empty
question; in that shape they are left out (they name no pair to score), while GLUE's shape refuses an empty
question as a broken record.

label 1 = duplicates (same class), 0 = not duplicates (different classes). Every question1 is inserted, every
question2 looked up. Classes are built over the texts of the whole split (semantic_pairs), so a question that
recurs in several pairs is one class. Category "qqp".

Knobs: pairs (default 0 = all; N keeps the first N in file order); --limit N keeps the first N.
"""

from __future__ import annotations

from cachebench.semantic.stream import Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, count_limit
from cachebench.tasks.builders.semantic_pairs import labelled_pairs, pair_stream
from cachebench.tasks.builders.semantic_records import records

HUB_DATASET, CONFIG, SPLIT = "nyu-mll/glue", "qqp", "validation"
SHAPE = "GLUE QQP's"
CATEGORY = "qqp"
KEYS = ("question1", "question2", ("label", "is_duplicate"))
KAGGLE_LABEL = "is_duplicate"


def build_stream(request: StreamRequest) -> Stream:
    """The QQP pairs, question1 inserted and question2 looked up."""
    check_known(request.args, ("pairs",), "semantic_qqp")
    limit = count_limit(request.args, "pairs", 0, "semantic_qqp", request.limit)
    rows, where = records(request.data_path, SHAPE, hub_id=HUB_DATASET, split=SPLIT, config=CONFIG)
    kaggle = bool(rows) and rows[0].get("label") is None and KAGGLE_LABEL in rows[0]
    return pair_stream(CATEGORY, CATEGORY, labelled_pairs(rows, where, KEYS, SHAPE, skip_blank=kaggle), where,
                       limit)
