"""Labelled text pairs (QQP, PAWS, GPTCache's pair files) as a pair-protocol Stream with consistent classes.

A pair file labels pairs, not classes, and one question often sits in several pairs. Giving every pair its own
classes would call a hit on the same question from another pair wrong, so classes are built over the texts: the
same text (up to case and spacing) is one class, and label-1 pairs join their two texts' classes (union-find).
A label-0 pair whose texts end up in one class anyway (an identical pair, or a chain of duplicates) contradicts
its label; it is dropped rather than scored with a class the label denies.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream
from cachebench.tasks.builders.semantic_records import at, label_field, text_field


def text_key(text: str) -> str:
    """What makes two texts the same question: case and runs of whitespace do not count."""
    return " ".join(text.split()).casefold()


class UnionFind:
    """Classes over hashable keys; roots keep the first key seen, so class numbers follow file order."""

    def __init__(self) -> None:
        self.parent: dict[object, object] = {}
        self.order: dict[object, int] = {}

    def add(self, key: object) -> None:
        if key not in self.parent:
            self.parent[key] = key
            self.order[key] = len(self.order)

    def find(self, key: object) -> object:
        self.add(key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: object, b: object) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            first, second = sorted((root_a, root_b), key=self.order.__getitem__)
            self.parent[second] = first

    def class_number(self, key: object) -> int:
        return self.order[self.find(key)]


@dataclass(frozen=True)
class LabelledPair:
    """One record of a pair file: where it is, its two texts and whether they mean the same."""

    number: int  # 1-based record number in the file
    first: str
    second: str
    label: int


def labelled_pairs(rows: list[dict], where: str, keys: tuple[str, str, str | tuple[str, ...]], shape: str,
                   skip_blank: bool = False) -> list[LabelledPair]:
    """The (first, second, label) fields of every row, checked (the label under the first present of its
    names). `skip_blank`: a row with an empty or absent text is left out instead of refused, for files known to
    hold a few such rows (record numbers still count it)."""
    first, second, label = keys
    pairs = []
    for index, row in enumerate(rows, start=1):
        place = at(where, index)
        if skip_blank and not all(_has_text(row.get(key)) for key in (first, second)):
            continue
        pairs.append(LabelledPair(index, text_field(row, first, place, shape), text_field(row, second, place, shape),
                                  label_field(row, label, place, shape)))
    return pairs


def _has_text(value: object) -> bool:
    return value is not None and bool(str(value).strip())


def pair_stream(name: str, category: str, pairs: list[LabelledPair], where: str, limit: int | None) -> Stream:
    """Pairs with union-find classes over their texts; at most `limit` pairs (all when None)."""
    classes = UnionFind()
    for pair in pairs:
        classes.add(text_key(pair.first))
        classes.add(text_key(pair.second))
        if pair.label == 1:
            classes.union(text_key(pair.first), text_key(pair.second))
    stream = Stream(name=name, protocol="pair", categories=(category,))
    for pair in pairs:
        if limit is not None and len(stream.pairs) >= limit:
            break
        first_class = classes.class_number(text_key(pair.first))
        second_class = classes.class_number(text_key(pair.second))
        if pair.label == 0 and first_class == second_class:
            continue
        stream.pairs.append((_request(name, category, pair.number, "a", pair.first, first_class),
                             _request(name, category, pair.number, "b", pair.second, second_class)))
    if pairs and not stream.pairs and (limit is None or limit > 0):
        raise UsageError(f"{where}: every pair contradicts its label (label 0 on texts of one class)")
    return stream


def _request(name: str, category: str, number: int, side: str, text: str, class_number: int) -> Request:
    class_id = f"{name}:{class_number}"
    return Request(request_id=f"{name}-{number}{side}", prompt=text, class_id=class_id, category=category,
                   timestamp=0.0, response=f"(answer of {class_id})")
