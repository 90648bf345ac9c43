"""semantic.contextual: follow-up queries whose meaning depends on the query before them, MeanCache's contextual
case (Gill et al. 2024), from `--data FILE` only.

MeanCache's released contextual files (dataset_contextual_queries/*.json in github.com/warisgill/MeanCache) are
JSON arrays of one main query and one follow-up each:

    {"Main Query": "...", "Main Query Response": "...", "Follow-Up Query": "...", "Follow Up Query Response": "..."}

They say what a follow-up answers, not which two follow-ups mean the same, so they cannot score a cache on their
own. This task reads a labelled extension of that shape, one pair of context chains per record:

    {"main": "What is the capital of France?",            (or "Main Query")
     "follow_up": "What is it famous for?",               (or "Follow-Up Query")
     "main_b": "Tell me about Japan's capital.",          the context of the second follow-up
     "follow_up_b": "What is it famous for?",             optional, default: follow_up (the same text)
     "label": 0,                                          1: the second follow-up, in its context, asks the same
     "response": "...", "response_b": "..."}              optional ("Follow Up Query Response" is read too)

The trap is label 0 with the same follow-up text under a different main query (a different class that must not
hit); the control is label 1, the same follow-up under a paraphrased main query (the same class). Main queries go
to Stream.ancestors and each follow-up names its main as `parent`; every follow-up of field "follow_up" is
inserted, every "follow_up_b" looked up. Classes: a main query is its text; a follow-up is (its main's class, its
text), and label-1 records join the two follow-ups' classes (union-find over the whole file). A label-0 record
whose two sides land in one class contradicts itself and is an error. Category "contextual".

Knobs: pairs (default 0 = all), the first records kept in file order; --limit N lowers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, count_limit
from cachebench.tasks.builders.semantic_pairs import UnionFind, text_key
from cachebench.tasks.builders.semantic_records import at, label_field, records, text_field

SHAPE = "cachebench's contextual (main/follow_up/main_b/label)"
CATEGORY = "contextual"
MAIN = ("main", "Main Query")
FOLLOW = ("follow_up", "Follow-Up Query")
ANSWER = ("response", "Follow Up Query Response")
MAIN_ANSWER = ("main_response", "Main Query Response")


def build_stream(request: StreamRequest) -> Stream:
    """Pairs of follow-ups under their main queries, with the contextual trap."""
    check_known(request.args, ("pairs",), "semantic_contextual")
    limit = count_limit(request.args, "pairs", 0, "semantic_contextual", request.limit)
    rows, where = records(request.data_path, SHAPE)
    chains = [_chain(row, at(where, index)) for index, row in enumerate(rows, start=1)]
    mains, follows = UnionFind(), UnionFind()
    for chain in chains:
        mains.add(text_key(chain["main"]))
        mains.add(text_key(chain["main_b"]))
    for chain in chains:
        a, b = _node(mains, chain["main"], chain["follow_up"]), _node(mains, chain["main_b"], chain["follow_up_b"])
        follows.add(a)
        follows.add(b)
        if chain["label"] == 1:
            follows.union(a, b)
    answers: dict[str, str] = {}
    stream = Stream(name=CATEGORY, protocol="pair", categories=(CATEGORY,))
    for index, chain in enumerate(chains, start=1):
        if limit is not None and len(stream.pairs) >= limit:
            break
        a, b = _node(mains, chain["main"], chain["follow_up"]), _node(mains, chain["main_b"], chain["follow_up_b"])
        class_a, class_b = f"contextual:{follows.class_number(a)}", f"contextual:{follows.class_number(b)}"
        if chain["label"] == 0 and class_a == class_b:
            raise UsageError(f"{at(where, index)}: label 0, but both follow-ups ask the same thing in the same "
                             "context (identical texts, or joined by label-1 records)")
        sides = []
        for side, main_key, follow_key, answer_key in (("a", "main", "follow_up", "response"),
                                                       ("b", "main_b", "follow_up_b", "response_b")):
            main_class = f"contextual:main:{mains.class_number(text_key(chain[main_key]))}"
            main_id = f"ctx-{index}-main-{side}"
            stream.ancestors[main_id] = _request(main_id, chain[main_key], main_class, answers,
                                                 chain["main_response"] if side == "a" else None)
            class_id = class_a if side == "a" else class_b
            sides.append(_request(f"ctx-{index}-{side}", chain[follow_key], class_id, answers, chain[answer_key],
                                  parent=main_id))
        stream.pairs.append((sides[0], sides[1]))
    return stream


def _chain(row: Mapping[str, Any], place: str) -> dict[str, Any]:
    """The fields of one record, checked; MeanCache's unlabelled records get a hint on what to add."""
    if row.get("main_b") is None and any(key in row for key in ("Main Query", "Follow-Up Query")):
        raise UsageError(f"{place}: missing 'main_b' (a MeanCache record has one context; add 'main_b' and "
                         "'label' to pair its follow-up with another context)")
    follow_up = text_field(row, FOLLOW, place, SHAPE)
    return {
        "main": text_field(row, MAIN, place, SHAPE),
        "follow_up": follow_up,
        "main_b": text_field(row, "main_b", place, SHAPE),
        "follow_up_b": text_field(row, "follow_up_b", place, SHAPE) if row.get("follow_up_b") is not None
        else follow_up,
        "label": label_field(row, "label", place, SHAPE),
        "response": _optional(row, ANSWER, place),
        "response_b": _optional(row, ("response_b",), place),
        "main_response": _optional(row, MAIN_ANSWER, place),
    }


def _optional(row: Mapping[str, Any], keys: tuple[str, ...], place: str) -> str | None:
    present = [key for key in keys if row.get(key) is not None]
    return text_field(row, present[0], place, SHAPE) if present else None


def _node(mains: UnionFind, main: str, follow_up: str) -> tuple[int, str]:
    return mains.class_number(text_key(main)), text_key(follow_up)


def _request(request_id: str, text: str, class_id: str, answers: dict[str, str], given: str | None,
             parent: str | None = None) -> Request:
    """A request whose response is its class's: the one given with the class's first request in the file, else a
    label (one class must have one response, or a correct hit would look stale)."""
    response = answers.setdefault(class_id, given or f"(answer of {class_id})")
    return Request(request_id=request_id, prompt=text, class_id=class_id, category=CATEGORY, timestamp=0.0,
                   parent=parent, response=response)
