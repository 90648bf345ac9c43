"""The generator's long tail: classes beyond the hand-written ones, for streams larger than the default.

A stream of a million requests drawn from the ~730 written classes would be almost all repeats, which no real
workload is. So a category's ranking goes on past its written classes with classes that name made-up entities
(semantic_names): a fact about a town or a company, the price of a company's stock or the weather in a town, a
conversation about visiting a town or a new gadget, code that calls a company's API in one of the eight
languages. Each is built from a template family the way the written classes are (same paraphrase sets, same
class-id scheme, same slot variants), so follow-ups, hard negatives and staleness work on them unchanged.

Tail class j of a category is a pure function of (seed, category, j), built on first use: a stream draws a small
share of a million-class tail, and nothing else needs the rest. Popularity continues the category's Zipf law:
tail class j of a single-ranked category has weight 1/(n + j + 1)^s after the n written classes; a code class is
(tail task, language) with weight 1/(task rank)^s x 1/(language rank)^s, the tail tasks ranking after the
written ones.
"""

from __future__ import annotations

import random

from cachebench.tasks.builders.semantic_names import name
from cachebench.tasks.builders.semantic_templates import (
    CITY_TEMPLATES,
    CODE_TEMPLATES,
    CONVERSATION_FRAMES,
    LANGUAGES,
    Intent,
    slug,
)

# (relation, entity kind, paraphrase templates, answer with {x} and {n})
FACT_RELATIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("population", "town", ("What is the population of {x}?", "population of {x}", "How many people live in {x}?",
                            "{x} population?", "How big is the population of {x}?"),
     "About {n:,} people live in {x}."),
    ("founder", "company", ("Who founded {x}?", "founder of {x}", "Who started {x}?", "Who is the founder of {x}?",
                            "{x} was founded by whom?"),
     "{x} was founded by its first chief executive in {year}."),
    ("born", "person", ("When was {x} born?", "{x} birthday", "What year was {x} born?", "{x} date of birth",
                        "In which year was {x} born?"),
     "{x} was born in {year}."),
    ("maker", "product", ("Who makes the {x}?", "manufacturer of the {x}", "Which company makes the {x}?",
                          "{x} maker", "Who produces the {x}?"),
     "The {x} is made by maker #{n}."),
    ("founded", "town", ("When was {x} founded?", "founding year of {x}", "How old is the town of {x}?",
                         "In what year was {x} founded?", "{x} founded when?"),
     "{x} was founded in {year}."),
    ("headquarters", "company", ("Where is {x} headquartered?", "{x} headquarters location",
                                 "Where are the headquarters of {x}?", "In which city is {x} based?",
                                 "{x} head office"),
     "{x} is based in office #{n}."),
    ("known-for", "person", ("What is {x} known for?", "Who is {x}?", "Why is {x} famous?", "{x} known for",
                             "Tell me who {x} is."),
     "{x} is known for work #{n}."),
    ("release", "product", ("When did the {x} come out?", "{x} release date", "When was the {x} released?",
                            "What year did the {x} launch?", "release year of the {x}"),
     "The {x} came out in {year}."),
)

# (kind of value, entity kind, paraphrase templates): the generator appends the value of the current period
LIVE_KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("stock", "company", ("What's the price of {x} stock right now?", "{x} stock price now",
                          "current {x} share price", "How much is {x} stock trading at today?",
                          "price of {x} shares at the moment")),
    ("weather", "town", CITY_TEMPLATES),
    ("traffic", "town", ("How's the traffic in {x} right now?", "{x} traffic now", "current traffic in {x}",
                         "Is there a lot of traffic in {x} today?", "road conditions in {x} at the moment")),
    ("availability", "product", ("Is the {x} in stock right now?", "{x} availability now",
                             "can I still buy the {x} today?", "Is the {x} sold out at the moment?",
                             "current stock of the {x}")),
)

# (frame of CONVERSATION_FRAMES, topic with {x}, entity kind)
CONVERSATION_TOPICS: tuple[tuple[str, str, str], ...] = (
    ("tips", "visiting {x}", "town"),
    ("recommend", "a restaurant in {x}", "town"),
    ("opinion", "the {x}", "product"),
    ("plan", "a weekend in {x}", "town"),
    ("pep", "my interview at {x}", "company"),
    ("howto", "set up my new {x}", "product"),
    ("poem", "my friend {x}", "person"),
    ("curious", "the history of {x}", "town"),
    ("tips", "starting a new job at {x}", "company"),
    ("recommend", "accessories for the {x}", "product"),
    ("comfort", "just got laid off by {x}", "company"),
    ("story", "{x} and a runaway balloon", "person"),
    ("feelings", "nervous about my first week at {x}", "company"),
    ("eli5", "how {x} makes money", "company"),
    ("joke", "someone who bought the {x}", "product"),
    ("describe", "the old harbour of {x}", "town"),
    ("opinion", "moving to {x}", "town"),
    ("tips", "getting along with my manager {x}", "person"),
    ("plan", "a surprise party for {x}", "person"),
    ("recommend", "a gift for {x}, who loves hiking", "person"),
    ("howto", "clean the {x}", "product"),
    ("pep", "a chess match against {x}", "person"),
    ("curious", "the founding of {x}", "company"),
    ("story", "a fox who lived near {x}", "town"),
    ("comfort", "had a falling-out with {x}", "person"),
    ("tips", "cycling around {x}", "town"),
    ("opinion", "the new {x} ad campaign", "company"),
    ("plan", "a school trip to {x}", "town"),
    ("feelings", "disappointed with my {x}", "product"),
    ("eli5", "what the {x} does that older models did not", "product"),
    ("describe", "a winter morning in {x}", "town"),
    ("joke", "a cat named {x}", "person"),
)

# (task key, imperative phrase, terse search phrase), {x} a company: asked in every language, as written tasks are
CODE_TASK_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("call-api", "call the {x} REST API", "call {x} api"),
    ("sdk-auth", "authenticate with the {x} SDK", "authenticate {x} sdk"),
    ("webhook", "verify a {x} webhook signature", "verify {x} webhook signature"),
    ("export", "parse a {x} data export", "parse {x} data export"),
)

_AGES = {"town": 900, "company": 120, "person": 90, "product": 15}  # how far back an answer's year may lie
_FRAMES = {frame: templates for frame, templates, _ in CONVERSATION_FRAMES}
TAIL_MARK = "~"  # tail class ids carry it, so a written class and a tail class never share an id


class Tail:
    """The tail of one category: `count` classes after the written ones (code: `count` tasks x the languages)."""

    def __init__(self, category: str, seed: int, count: int, exponent: float, start_rank: int,
                 language_ranks: tuple[int, ...] = ()) -> None:
        self.category, self.seed, self.count = category, seed, count
        self.exponent = exponent
        self.start_rank = start_rank  # written classes (code: written tasks) ranking before the tail
        self.language_ranks = language_ranks  # code: each language's popularity rank, in LANGUAGES order
        self._built: dict[int, Intent] = {}
        self._positions: dict[str, int] = {}

    @property
    def size(self) -> int:
        """Classes in the tail."""
        return self.count * len(LANGUAGES) if self.category == "code" else self.count

    def weights(self) -> list[float]:
        """Each tail class's popularity, in tail order."""
        s = self.exponent
        if self.category != "code":
            return [1.0 / (self.start_rank + j + 1) ** s for j in range(self.count)]
        languages = [1.0 / (rank + 1) ** s for rank in self.language_ranks]
        return [1.0 / (self.start_rank + task + 1) ** s * language for task in range(self.count)
                for language in languages]

    def intent(self, j: int) -> Intent:
        """Tail class j, built once."""
        found = self._built.get(j)
        if found is None:
            found = self._built[j] = _BUILDERS[self.category](self, j)
            self._positions[found.class_id] = j
        return found

    def position(self, class_id: str) -> int | None:
        """The tail position of a class built so far (None: not a tail class of this category)."""
        return self._positions.get(class_id)

    def neighbours(self, j: int) -> list[int]:
        """Tail classes that differ from class j in one slot: the same relation (frame, task, language) about a
        nearby entity, or the same entity under another relation (code: the same task in another language)."""
        if self.category == "code":
            task, language = divmod(j, len(LANGUAGES))
            width = len(LANGUAGES)
            other_language = [task * width + other for other in range(width) if other != language]
            families = len(CODE_TASK_FAMILIES)
            same_kind = [(task + step) * width + language for step in (-families, families)]
            found = other_language + same_kind
        else:
            width = len(_FAMILIES[self.category])
            entity, family = divmod(j, width)
            kind = _FAMILIES[self.category][family]
            same_family = [(entity + step) * width + family for step in (-2, -1, 1, 2)]
            same_entity = [entity * width + other for other in range(width)
                           if other != family and _FAMILIES[self.category][other] == kind]
            found = same_family + same_entity
        return [other for other in found if 0 <= other < self.size]

    def sibling(self, j: int, language_lc: str) -> int | None:
        """Code: the tail class of j's task in another language."""
        order = [lc for _, lc in LANGUAGES]
        if self.category != "code" or language_lc not in order:
            return None
        return j - j % len(LANGUAGES) + order.index(language_lc)

    def entity(self, kind: str, number: int) -> str:
        return name(kind, number, self.seed)


_FAMILIES = {
    "factual": [kind for _, kind, _, _ in FACT_RELATIONS],
    "time-sensitive": [kind for _, kind, _ in LIVE_KINDS],
    "conversation": [kind for _, _, kind in CONVERSATION_TOPICS],
}


def _value(tail: Tail, *parts: object) -> int:
    """A number fixed by the seed and the parts (an answer's figures); str seeds hash the same in every run."""
    return random.Random(":".join(map(str, ("tail", tail.seed, *parts)))).randrange(1 << 30)


def _factual(tail: Tail, j: int) -> Intent:
    entity, family = divmod(j, len(FACT_RELATIONS))
    relation, kind, templates, answer = FACT_RELATIONS[family]
    x = tail.entity(kind, entity)
    value = _value(tail, relation, x)
    return Intent(f"fact:{relation}{TAIL_MARK}:{slug(x)}", "factual", tuple(t.format(x=x) for t in templates),
                  answer.format(x=x, n=1000 + value % 990_000, year=2024 - value % _AGES[kind]), (("entity", x),))


def _live(tail: Tail, j: int) -> Intent:
    entity, family = divmod(j, len(LIVE_KINDS))
    kind_of_value, kind, templates = LIVE_KINDS[family]
    x = tail.entity(kind, entity)
    return Intent(f"live:{kind_of_value}{TAIL_MARK}:{slug(x)}", "time-sensitive",
                  tuple(t.format(x=x) for t in templates), f"{kind_of_value} of {x}", (("entity", x),))


def _conversation(tail: Tail, j: int) -> Intent:
    entity, family = divmod(j, len(CONVERSATION_TOPICS))
    frame, topic, kind = CONVERSATION_TOPICS[family]
    filled = topic.format(x=tail.entity(kind, entity))
    return Intent(f"conv:{frame}{TAIL_MARK}:{slug(filled)}", "conversation",
                  tuple(t.format(t=filled) for t in _FRAMES[frame]), f"(chat reply) {frame} about {filled}",
                  (("topic", filled),))


def _code(tail: Tail, j: int) -> Intent:
    task, language = divmod(j, len(LANGUAGES))
    entity, family = divmod(task, len(CODE_TASK_FAMILIES))
    key, do, terse = CODE_TASK_FAMILIES[family]
    company = tail.entity("company", entity)
    do, terse = do.format(x=company), terse.format(x=company)
    lang, lang_lc = LANGUAGES[language]
    fill = {"do": do, "Do": do[0].upper() + do[1:], "terse": terse, "lang": lang, "lang_lc": lang_lc}
    task_key = f"{key}{TAIL_MARK}{slug(company)}"
    return Intent(f"code:{task_key}:{lang_lc}", "code", tuple(t.format(**fill) for t in CODE_TEMPLATES),
                  f"[{lang}] how to {do}: answer for code:{task_key}:{lang_lc}", (("language", lang),),
                  (f"task:{task_key}", f"language:{lang_lc}"))


_BUILDERS = {"factual": _factual, "time-sensitive": _live, "conversation": _conversation, "code": _code}


def tail_size(written: int, scale: float) -> int:
    """Tail classes (code: tasks) that keep a category's class count in proportion to the stream: the written
    `written` grow to round(written x scale); none at scale <= 1."""
    return max(0, round(written * scale) - written) if scale > 1 else 0


__all__ = ["TAIL_MARK", "Tail", "tail_size"]
