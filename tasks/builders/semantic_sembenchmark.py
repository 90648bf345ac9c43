"""semantic.sembenchmark: vCache's SemBenchmark datasets (Schroeder et al. 2025) as a request stream in row order.

Loaded from the HF hub (`dataset`, default `vCache/SemBenchmarkLmArena`; also `vCache/SemBenchmarkClassification`,
`vCache/SemBenchmarkSearchQueries`, `vCache/SemBenchmarkCombo`, split "train"), or `--data FILE` (.parquet as
the hub ships it; JSON/JSONL/CSV of the same columns also read). Columns seen in the released files:

    LmArena:         id, ID_Set, dataset_name, prompt, response_gpt-4o-mini, response_gpt-4.1-nano, emb_gte,
                     emb_gte_ft, emb_e5_large_v2, emb_e5_large_v2_ft, emb_text-embedding-3-small/-large (+ _lat)
    SearchQueries:   id, id_set, prompt, word_count, response_llama_3_8b, emb_gte (+ _lat)
    Classification:  id, dataset_name (commonsense_qa, amazon_instant_video, ecommerce_categorization), prompt,
                     output_format, response_llama_3_8b, emb_gte (+ _lat); no id column: the class is the label

Precomputed embeddings (emb_*) and latencies (*_lat) are not read. A request per row: class = `class_column`
(auto: id_set, else ID_Set, else the response column, as vCache scores the classification set by its one-word
answers); a negative id (SemBenchmarkCombo marks prompts that must not hit so) is a class of its own. Response =
the response column of the class's first row (one class, one correct response). Category = a `category` column
when the file has one (one of CATEGORIES), else `category_column` (dataset_name) when its value is one of the
classification sources, else "sembenchmark". Timestamp = row number in seconds, user u0.

A local file may also carry (cachebench's extension, for replaying real traces): `timestamp` (seconds, never
negative, never going backwards), `user` (non-empty text or an integer, taken as written: 0 and "u0" are
two users; a row without one is user u0), and `parent` (the `id` of an earlier row this one follows up).

Knobs: dataset, split, requests (default 0 = all rows; --limit N keeps the first N), class_column,
response_column, category_column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, count_limit
from cachebench.tasks.builders.semantic_records import at, records, text_field, timestamp_field, user_field

SHAPE = "SemBenchmark's (prompt, id_set/ID_Set, response_*)"
DEFAULT_DATASET = "vCache/SemBenchmarkLmArena"
SOURCES = ("commonsense_qa", "amazon_instant_video", "ecommerce_categorization")
CATEGORIES: tuple[str, ...] = ("sembenchmark", *SOURCES)
CLASS_COLUMNS = ("id_set", "ID_Set")
RESPONSE_COLUMNS = ("response_llama_3_8b", "response_gpt-4o-mini", "response_gpt-4.1-nano")
KNOBS = ("dataset", "split", "requests", "class_column", "response_column", "category_column")


def keep_column(name: str) -> bool:
    """Leave out precomputed embeddings and latencies (gigabytes the cache computes itself)."""
    return not name.startswith("emb_") and not name.endswith("_lat")


def build_stream(request: StreamRequest) -> Stream:
    """One request per row, in row order."""
    args = request.args
    check_known(args, KNOBS, "semantic_sembenchmark")
    limit = count_limit(args, "requests", 0, "semantic_sembenchmark", request.limit)
    rows, where = records(request.data_path, SHAPE, hub_id=str(args.get("dataset", DEFAULT_DATASET)),
                          split=str(args.get("split", "train")), limit=limit or 0, keep=keep_column)
    if limit is not None:
        rows = rows[:limit]
    columns = _columns(rows, args, where)
    return Stream(name="sembenchmark", protocol="stream", requests=_requests(rows, columns, where),
                  categories=CATEGORIES)


def _columns(rows: list[dict[str, Any]], args: Mapping[str, Any], where: str) -> dict[str, str | None]:
    """Which columns hold the class, the response and the category (checked against the first row)."""
    present = set(rows[0]) if rows else set()
    responses = [name for name in RESPONSE_COLUMNS if name in present] or sorted(
        name for name in present if name.startswith("response_") and keep_column(name))
    response = args.get("response_column") or (responses[0] if responses else None)
    klass = args.get("class_column") or next((name for name in CLASS_COLUMNS if name in present), response)
    if klass is None:
        raise UsageError(f"{at(where, 1)}: missing 'id_set' (no id_set, ID_Set or response_* column; expected "
                         f"{SHAPE} record shape)")
    for knob, name in (("class_column", klass), ("response_column", response)):
        if args.get(knob) and name not in present:
            raise UsageError(f"{at(where, 1)}: no column {name!r} (named by {knob})")
    return {"class": klass, "response": response, "category": args.get("category_column", "dataset_name")}


def _requests(rows: list[dict[str, Any]], columns: dict[str, str | None], where: str) -> list[Request]:
    requests: list[Request] = []
    seen: dict[str, int] = {}  # request id -> row number
    answers: dict[str, str] = {}
    previous = 0.0
    clocked = bool(rows) and "timestamp" in rows[0]  # a trace's own clock: then every row must have one
    for index, row in enumerate(rows, start=1):
        place = at(where, index)
        prompt = text_field(row, "prompt", place, SHAPE)
        class_id = _class(row, columns["class"], place, index)
        if columns["response"] is not None:
            given = text_field(row, columns["response"], place, SHAPE)
        else:
            given = f"(answer of {class_id})"
        request_id = f"sb-{row['id']}" if row.get("id") is not None else f"sb-{index}"
        if request_id in seen:
            raise UsageError(f"{place}: id {row['id']!r} repeats row {seen[request_id]}")
        seen[request_id] = index
        timestamp = float(index - 1)
        if clocked:
            if row.get("timestamp") is None:
                raise UsageError(f"{place}: missing 'timestamp' (the first row has one, so every row needs one)")
            timestamp = previous = timestamp_field(row["timestamp"], place, previous)
        parent = None
        if row.get("parent") not in (None, ""):
            parent = f"sb-{row['parent']}"
            if parent not in seen:
                raise UsageError(f"{place}: parent {row['parent']!r} names no earlier row")
        requests.append(Request(request_id=request_id, prompt=prompt, class_id=class_id,
                                category=_category(row, columns["category"], place),
                                timestamp=timestamp, user=user_field(row, place), parent=parent,
                                response=answers.setdefault(class_id, given)))
    return requests


def _class(row: Mapping[str, Any], column: str, place: str, index: int) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UsageError(f"{place}: missing {column!r} (expected {SHAPE} record shape)")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # a CSV's "12" is the id 12
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{place}: {column!r} must be a class id, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            return f"sembenchmark:unique-{index}"
        return f"sembenchmark:{column}:{int(value) if value == int(value) else value}"
    return f"sembenchmark:{column}:{str(value).strip()}"


def _category(row: Mapping[str, Any], column: str | None, place: str) -> str:
    if row.get("category") is not None:
        category = str(row["category"])
        if category not in CATEGORIES:
            raise UsageError(f"{place}: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
        return category
    source = row.get(column) if column else None
    return source if source in SOURCES else "sembenchmark"
