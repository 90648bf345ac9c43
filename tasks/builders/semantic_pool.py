"""The generator's class pool: which intents exist, how often each is asked, how it is phrased, what the correct
response is at a given time, and what a follow-up to a request means.

Shared by the stream builder (semantic_generator) and the pair builder (semantic_generator_pairs), so both speak
about the same classes. Popularity is Zipf over a seeded ranking of each category's classes (exponent per
category: ~1 for code's power law, ~0 for conversation's near-uniform repetition); a code class ranks by its
task and its language, each Zipf over a seeded ranking: weight = 1/(task rank)^s x 1/(language rank)^s.
Responses of classes with a staleness period change every `period` seconds: response = f(class,
floor(timestamp / period)).

A stream larger than the default asks for `scale` > 1: each category whose classes are not capped then goes on
past its written classes with a long tail of generated ones (semantic_tail), so the class count stays in
proportion to the stream; at scale <= 1 the pool is exactly the written one.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from math import prod
from typing import overload

from cachebench.tasks.builders.semantic_tail import Tail, tail_size
from cachebench.tasks.builders.semantic_templates import CATEGORIES, FOLLOW_UPS, LANGUAGES, Intent, all_intents

FOLLOW_MARK = ">"  # a follow-up's class id is "<parent class>>"<intent>"


@dataclass(frozen=True)
class Meaning:
    """What a request asks, as the benchmark knows it: its class, category, slots (for follow-ups) and answer."""

    class_id: str
    category: str
    answer: str
    slots: tuple[tuple[str, str], ...] = ()
    base: bool = True  # False for a follow-up (its meaning depends on its parent)


@dataclass(frozen=True)
class FollowUp:
    """A follow-up's text, its intent key (with the slot it fills) and its meaning under one parent."""

    text: str
    key: str
    fill: dict[str, str]
    meaning: Meaning


def stable_int(*parts: object) -> int:
    """A hash that does not change between runs (Python's hash() of a str does)."""
    digest = hashlib.blake2b("|".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Ranked(Sequence[Intent]):
    """A category's classes in popularity order: the written ones, then the generated tail (built on use)."""

    def __init__(self, written: list[Intent], tail: Tail) -> None:
        self.written, self.tail = written, tail
        self._length = len(written) + tail.size

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Intent: ...

    @overload
    def __getitem__(self, index: slice) -> list[Intent]: ...

    def __getitem__(self, index: int | slice) -> Intent | list[Intent]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        written = len(self.written)
        return self.written[index] if index < written else self.tail.intent(index - written)


class Pool:
    """The intents of every category with their popularity, paraphrase subsets and staleness periods."""

    def __init__(self, seed: int, zipf: dict[str, float], periods: dict[str, float], paraphrases: int = 0,
                 classes: dict[str, float] | None = None, scale: float = 1.0) -> None:
        self.seed, self.periods, self.paraphrases = seed, periods, paraphrases
        rng = random.Random(f"pool:{seed}")
        self.intents: dict[str, Sequence[Intent]] = {}
        self._written: dict[str, list[Intent]] = {}
        self._tails: dict[str, Tail] = {}
        self._cum: dict[str, Sequence[float]] = {}
        for category, intents in all_intents().items():
            exponent = zipf.get(category, 0.0)
            ranks: dict[str, int] = {}  # popularity rank of every axis value, the seed's choice
            for axis in range(max(len(intent.axes) for intent in intents) or 1):
                values = sorted({_axes(intent)[axis] for intent in intents})
                rng.shuffle(values)
                ranks.update((value, rank) for rank, value in enumerate(values))
            weight = {intent.class_id: prod(1.0 / (ranks[value] + 1) ** exponent for value in _axes(intent))
                      for intent in intents}
            ranked = sorted(intents, key=lambda intent: -weight[intent.class_id])  # stable: ties keep file order
            cap = int((classes or {}).get(category, 0))
            if cap > 0:
                ranked = ranked[:cap]
            self.intents[category] = self._written[category] = ranked
            self._cum[category] = list(accumulate(weight[intent.class_id] for intent in ranked))
            if cap <= 0 and scale > 1:
                self._grow(category, ranked, ranks, exponent, scale)
        self._by_id_all = {intent.class_id: intent for intents in all_intents().values() for intent in intents}

    def _grow(self, category: str, written: list[Intent], ranks: dict[str, int], exponent: float,
              scale: float) -> None:
        """Append the category's tail: its classes (code: its tasks) grow to round(written x scale)."""
        if category == "code":
            tasks = {_axes(intent)[0] for intent in written}
            language_ranks = tuple(ranks[f"language:{lc}"] for _, lc in LANGUAGES)
            tail = Tail(category, self.seed, tail_size(len(tasks), scale), exponent, len(tasks), language_ranks)
        else:
            tail = Tail(category, self.seed, tail_size(len(written), scale), exponent, len(written))
        if tail.size == 0:
            return
        head = self._cum[category]
        cum = array("d", head)
        cum.extend(accumulate(tail.weights(), initial=head[-1]))
        del cum[len(head)]  # accumulate's initial value is head[-1] again
        self._tails[category] = tail
        self.intents[category] = Ranked(written, tail)
        self._cum[category] = cum

    def draw(self, category: str, rng: random.Random) -> Intent:
        """A class of `category`, by Zipf popularity."""
        return rng.choices(self.intents[category], cum_weights=self._cum[category])[0]

    def templates(self, intent: Intent) -> tuple[str, ...]:
        """The paraphrases this class is asked with: all, or a seeded subset of `paraphrases` of them."""
        if self.paraphrases <= 0 or self.paraphrases >= len(intent.paraphrases):
            return intent.paraphrases
        chosen = random.Random(f"phrases:{self.seed}:{intent.class_id}").sample(range(len(intent.paraphrases)),
                                                                                 self.paraphrases)
        return tuple(intent.paraphrases[index] for index in sorted(chosen))

    def phrase(self, intent: Intent, rng: random.Random) -> str:
        return rng.choice(self.templates(intent))

    @staticmethod
    def meaning(intent: Intent) -> Meaning:
        return Meaning(intent.class_id, intent.category, intent.answer, intent.slots)

    def follow_up(self, parent: Meaning, rng: random.Random) -> FollowUp | None:
        """A follow-up to `parent`: a generic text whose meaning derives from (parent class, intent)."""
        key, forms = rng.choice(FOLLOW_UPS[parent.category])
        fill = {}
        if "{other}" in key:
            language = dict(parent.slots).get("language")
            others = [name for name, _ in LANGUAGES if name != language]
            if language is None:
                return None
            fill["other"] = rng.choice(others)
        key = key.format(**{name: value.lower() for name, value in fill.items()})
        return FollowUp(rng.choice(forms).format(**fill), key, fill, self.resolve(parent, key, fill))

    def resolve(self, parent: Meaning, key: str, fill: dict[str, str]) -> Meaning:
        """The meaning of follow-up `key` under `parent`. "What about in Go?" after a base code question asks
        the same as that task in Go, so it resolves to that base class; every other follow-up is a new class."""
        if "other" in fill and parent.base and parent.class_id.startswith("code:"):
            lowered = dict(LANGUAGES)[fill["other"]]
            task = parent.class_id.rsplit(":", 1)[0]
            target = self._by_id_all.get(f"{task}:{lowered}") or self._tail_sibling(parent.class_id, lowered)
            if target is not None:
                return self.meaning(target)
        class_id = f"{parent.class_id}{FOLLOW_MARK}{key}"
        slots = parent.slots if "other" not in fill else (("language", fill["other"]),)
        return Meaning(class_id, parent.category, f"(follow-up: {key}) on {parent.class_id}", slots, base=False)

    def response(self, meaning: Meaning, timestamp: float) -> str:
        """The correct response at `timestamp`: the answer, or for classes with a staleness period, the answer
        with the value of the current period (a deterministic function of class and bucket)."""
        period = self.periods.get(meaning.category, 0.0)
        if period <= 0:
            return meaning.answer
        bucket = int(timestamp // period)
        value = stable_int(meaning.class_id, bucket) % 1_000_000 / 100
        return f"{meaning.answer} [period {bucket}: {value:.2f}]"

    def _tail_sibling(self, class_id: str, language_lc: str) -> Intent | None:
        """A code tail class's task in another language."""
        tail = self._tails.get("code")
        position = tail.position(class_id) if tail is not None else None
        if tail is None or position is None:
            return None
        sibling = tail.sibling(position, language_lc)
        return tail.intent(sibling) if sibling is not None else None

    def hard_negatives(self, intent: Intent) -> list[Intent]:
        """Classes that differ from `intent` in one slot (other language, other entity, other topic or frame): a
        written class's among the written ones, a tail class's among its tail neighbours."""
        tail = self._tails.get(intent.category)
        position = tail.position(intent.class_id) if tail is not None else None
        if tail is not None and position is not None:
            return [tail.intent(other) for other in tail.neighbours(position)]
        family = _family(intent.class_id)
        return [other for other in self._written[intent.category]
                if other.class_id != intent.class_id and family & _family(other.class_id)]


def _axes(intent: Intent) -> tuple[str, ...]:
    return intent.axes or (intent.class_id,)


def _family(class_id: str) -> set[str]:
    """Keys that slot variants share: code shares a task, a language, or a task verb in one language; the
    others share a relation/kind/frame, or (conversation) a topic across frames. Small talk has no variants."""
    kind, group, rest = class_id.split(":", 2)
    if kind == "code":
        verb = group.split("-")[0]
        return {f"task:{group}", f"verb:{verb}:{rest}"}
    if kind == "conv":
        return {f"smalltalk:{rest}"} if group == "smalltalk" else {f"frame:{group}", f"topic:{rest}"}
    if group == "convert":  # "feet-in-a-mile": the unit or the whole may change, not both
        unit, whole = rest.split("-in-", 1)
        return {f"unit:{unit}", f"whole:{whole}"}
    return {f"group:{group}"}


__all__ = ["CATEGORIES", "FOLLOW_MARK", "FollowUp", "Meaning", "Pool", "Ranked", "stable_int"]
