"""The generator's class pool: which intents exist, how often each is asked, how it is phrased, what the correct
response is at a given time, and what a follow-up to a request means.

Shared by the stream builder (semantic_generator) and the pair builder (semantic_generator_pairs), so both speak
about the same classes. Popularity is Zipf over a seeded ranking of each category's classes (exponent per
category: ~1 for code's power law, ~0 for conversation's near-uniform repetition); a code class ranks by its
task and its language, each Zipf over a seeded ranking: weight = 1/(task rank)^s x 1/(language rank)^s.
Responses of classes with a staleness period change every `period` seconds: response = f(class,
floor(timestamp / period)).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import accumulate
from math import prod

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


class Pool:
    """The intents of every category with their popularity, paraphrase subsets and staleness periods."""

    def __init__(self, seed: int, zipf: dict[str, float], periods: dict[str, float], paraphrases: int = 0,
                 classes: dict[str, float] | None = None) -> None:
        self.seed, self.periods, self.paraphrases = seed, periods, paraphrases
        rng = random.Random(f"pool:{seed}")
        self.intents: dict[str, list[Intent]] = {}
        self._cum: dict[str, list[float]] = {}
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
            self.intents[category] = ranked
            self._cum[category] = list(accumulate(weight[intent.class_id] for intent in ranked))
        self._by_id_all = {intent.class_id: intent for intents in all_intents().values() for intent in intents}

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
            target = self._by_id_all.get(f"{task}:{lowered}")
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

    def hard_negatives(self, intent: Intent) -> list[Intent]:
        """Classes that differ from `intent` in one slot (other language, other entity, other topic or frame)."""
        family = _family(intent.class_id)
        return [other for other in self.intents[intent.category]
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


__all__ = ["CATEGORIES", "FOLLOW_MARK", "FollowUp", "Meaning", "Pool", "stable_int"]
