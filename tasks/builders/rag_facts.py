"""Invented facts for the rag.passages pool: who runs an invented organisation, and that person's phone number.

Each fact pair becomes two chunks (real passage text with one inserted sentence each), so a question can need
one chunk ("Who runs X?", "What is P's phone number?") or both ("the phone number of the person who runs X"):
the second kind only works when the model attends across chunks, which is exactly what chunk-wise KV reuse
(CacheBlend, KVLink) approximates. Names and numbers are invented and unique within a pool, so an answer can
only come from its chunk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_FIRST_NAMES = (
    "Odile", "Tamsin", "Ivo", "Lucan", "Marisol", "Anselm", "Petra", "Caspian", "Wren", "Idris", "Saoirse", "Emrys",
    "Liesel", "Bartram", "Noor", "Ottilie", "Fenwick", "Ysolde", "Corin", "Delphine", "Thaddeus", "Mirela",
    "Osric", "Zinnia",
)  # fmt: skip
_SURNAME_HEADS = ("Var", "Quil", "Mor", "Tes", "Bran", "Dov", "Kel", "Sor", "Vin", "Zal", "Hask", "Pell")
_SURNAME_TAILS = ("holt", "ovic", "aro", "essa", "mund", "ley", "vik", "ard", "wyn", "ecki")
_ADJECTIVES = (
    "Silver", "Amber", "Cobalt", "Granite", "Willow", "Crimson", "Juniper", "Copper", "Ivory", "Saffron",
    "Obsidian", "Hazel", "Marble", "Indigo",
)  # fmt: skip
_NOUNS = ("Heron", "Lantern", "Falcon", "Orchard", "Compass", "Anchor", "Meadow", "Beacon", "Thistle", "Otter")
_KINDS = (
    "Rowing Club", "Chess Society", "Bakery", "Observatory", "Puppet Theatre", "Book Exchange", "Cycling Club",
    "Radio Station", "Music School", "Ferry Company", "Seed Library", "Glassworks",
)  # fmt: skip


@dataclass(frozen=True)
class FactPair:
    """An invented organisation, the invented person who runs it, and that person's invented phone number."""

    organisation: str  # "the Amber Heron Rowing Club"
    person: str  # "Tamsin Quilholt"
    number: str  # "58213"

    @property
    def owner_sentence(self) -> str:
        return f"{self.organisation[0].upper()}{self.organisation[1:]} is run by {self.person}."

    @property
    def number_sentence(self) -> str:
        return f"{self.person}'s phone number is {self.number}."

    @property
    def owner_question(self) -> str:
        return f"Who runs {self.organisation}?"

    @property
    def number_question(self) -> str:
        return f"What is {self.person}'s phone number?"

    @property
    def two_hop_question(self) -> str:
        return f"What is the phone number of the person who runs {self.organisation}?"


def invent_pairs(count: int, rng: random.Random) -> list[FactPair]:
    """`count` fact pairs with distinct organisations, people and numbers (first names repeat only when a pool
    needs more people than there are first names)."""
    organisations = [f"the {a} {n} {k}" for a in _ADJECTIVES for n in _NOUNS for k in _KINDS]
    surnames = [head + tail for head in _SURNAME_HEADS for tail in _SURNAME_TAILS]
    if count > min(len(organisations), len(surnames)):
        raise ValueError(f"at most {min(len(organisations), len(surnames))} fact pairs can be invented")
    chosen_organisations = _distinct_heads(organisations, count, rng)
    firsts = rng.sample(_FIRST_NAMES, len(_FIRST_NAMES))
    people = [f"{firsts[i % len(firsts)]} {surname}" for i, surname in enumerate(rng.sample(surnames, count))]
    numbers = [str(n) for n in rng.sample(range(10000, 100000), count)]
    return [FactPair(o, p, n) for o, p, n in zip(chosen_organisations, people, numbers, strict=True)]


def _distinct_heads(organisations: list[str], count: int, rng: random.Random) -> list[str]:
    """Organisations whose "adjective noun" parts are all different, so no two are confusable by name."""
    shuffled = rng.sample(organisations, len(organisations))
    chosen, heads = [], set()
    for name in shuffled:
        head = " ".join(name.split()[1:3])
        if head not in heads:
            heads.add(head)
            chosen.append(name)
            if len(chosen) == count:
                return chosen
    seen = set(chosen)  # more pairs than distinct heads: allow repeats of a head with another kind
    chosen.extend(name for name in shuffled if name not in seen)
    return chosen[:count]
