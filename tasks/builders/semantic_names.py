"""Seeded, pronounceable names of made-up towns, companies, products and people for the generator's long tail.

A large stream needs many more classes than anyone can write by hand, and most real requests name an entity
(a town, a firm, a gadget, a person), so a new entity is a new class. The names are built from syllables, so
they read as names and split into ordinary word pieces (an embedder sees "Brelaford", not a random string), and
two names of one kind differ in a syllable or more, which is what separates "the population of Brelaford" from
"the population of Tesowick" in embedding space. Index i of a kind maps to one name through a seeded bijection,
so names never repeat within a kind and the same seed names the same entities.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

ONSETS = ("b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr", "r", "s",
          "sh", "st", "t", "tr", "v", "w", "z", "th", "cl", "bl")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
SYLLABLES = tuple(onset + vowel for onset in ONSETS for vowel in VOWELS)  # 240
TOWN_ENDS = ("ton", "ford", "wick", "moor", "dale", "by", "stead", "field", "haven", "bury", "mouth", "port",
             "ridge", "holm", "thorpe", "vale", "minster", "combe", "ness", "ley", "brook", "castle", "gate", "well")
BRAND_ENDS = ("na", "ron", "rix", "lex", "via", "tum", "lo", "dar")  # syllables end in a vowel
INDUSTRIES = ("Systems", "Labs", "Foods", "Motors", "Analytics", "Bank", "Airlines", "Robotics", "Pharma", "Energy",
              "Logistics", "Media", "Insurance", "Games", "Brewing", "Textiles", "Telecom", "Shipping", "Biotech",
              "Furniture", "Cosmetics", "Security", "Mining", "Studios")
PRODUCT_TYPES = ("headphones", "blender", "e-bike", "smartwatch", "robot vacuum", "air fryer", "camera", "laptop",
                 "router", "espresso machine", "tent", "drone", "electric toothbrush", "hiking boots", "monitor",
                 "standing desk", "rice cooker", "tablet", "projector", "baby stroller", "kayak", "sewing machine",
                 "dishwasher", "keyboard")
MODEL_LETTERS = "ACDGKMRSVX"
FIRST_ENDS = ("na", "ro", "ren", "lia", "mel", "rie", "tus", "lin", "da", "ko", "bert", "sha", "ric", "nor", "fi",
              "lo")
LAST_ENDS = ("ker", "son", "rov", "nez", "tini", "gard", "well", "ski", "moto", "berg", "lund", "quist", "dottir",
             "ley", "via", "ham")
KINDS = ("town", "company", "product", "person")


def _town(digits: list[int]) -> str:
    first, second, end = digits
    return (SYLLABLES[first] + SYLLABLES[second] + TOWN_ENDS[end]).capitalize()


def _brand(first: int, second: int, end: int) -> str:
    return (SYLLABLES[first] + SYLLABLES[second] + BRAND_ENDS[end]).capitalize()


def _company(digits: list[int]) -> str:
    first, second, end, industry = digits
    return f"{_brand(first, second, end)} {INDUSTRIES[industry]}"


def _product(digits: list[int]) -> str:
    first, second, end, letter, number, kind = digits
    return f"{_brand(first, second, end)} {MODEL_LETTERS[letter]}{number + 1} {PRODUCT_TYPES[kind]}"


def _person(digits: list[int]) -> str:
    first, first_end, last_a, last_b, last_end = digits
    given = (SYLLABLES[first] + FIRST_ENDS[first_end]).capitalize()
    family = (SYLLABLES[last_a] + SYLLABLES[last_b] + LAST_ENDS[last_end]).capitalize()
    return f"{given} {family}"


# per kind: the radix of each name part, and how the parts make the name
_SHAPES = {
    "town": ((len(SYLLABLES), len(SYLLABLES), len(TOWN_ENDS)), _town),
    "company": ((len(SYLLABLES), len(SYLLABLES), len(BRAND_ENDS), len(INDUSTRIES)), _company),
    "product": ((len(SYLLABLES), len(SYLLABLES), len(BRAND_ENDS), len(MODEL_LETTERS), 9, len(PRODUCT_TYPES)),
                _product),
    "person": ((len(SYLLABLES), len(FIRST_ENDS), len(SYLLABLES), len(SYLLABLES), len(LAST_ENDS)), _person),
}


def capacity(kind: str) -> int:
    """How many distinct names `kind` has."""
    return math.prod(_SHAPES[kind][0])


@lru_cache(maxsize=64)
def _permutation(seed: int, kind: str) -> tuple[int, int]:
    """(multiplier, offset) of the seed's bijection i -> (a*i + b) mod capacity: a is coprime with the capacity,
    so distinct indices give distinct names, scattered over the syllable grid rather than counting through it."""
    total = capacity(kind)
    rng = random.Random(f"names:{seed}:{kind}")
    multiplier = rng.randrange(total // 3, total)
    while math.gcd(multiplier, total) != 1:
        multiplier += 1
    return multiplier, rng.randrange(total)


def name(kind: str, index: int, seed: int) -> str:
    """The `index`-th name of `kind` under `seed`; distinct indices below capacity(kind) give distinct names."""
    radices, build = _SHAPES[kind]
    total = math.prod(radices)
    if not 0 <= index < total:
        raise ValueError(f"{kind} names: index {index} outside 0..{total - 1}")
    multiplier, offset = _permutation(seed, kind)
    value = (multiplier * index + offset) % total
    digits = []
    for radix in radices:
        value, digit = divmod(value, radix)
        digits.append(digit)
    return build(digits)
