"""longconvqa.sessions: QA over a long dated history of chat sessions between two people (LongMemEval / LoCoMo
style), offline.

Per episode, two speakers from our own list (e.g. Maya and Tom) share a history of dated sessions:

- **chitchat sessions**: real human-human conversations from the MIT-licensed `chitchat-dataset` package on
  PyPI (7,168 conversations; its two anonymous senders become our two speakers, in a seeded order). A session is
  the conversation's first `session_turns` turns (each turn's messages joined into one utterance). Conversations
  with one sender or under 4 turns are never used, nor ones that state where someone lives, their pets, job,
  favourite food, hobbies or trips (they would contradict the evidence) or that mention any name or value of the
  episode's facts.
- **evidence sessions**: 2-3 lines written from templates (longconvqa_templates) in which one speaker states a
  fact about themselves: the city they live in and the city they later move to, their job and a later new job,
  two pets adopted (kind and name), favourite food, a hobby taken up, a planned trip. Only the sessions the
  episode's questions need are included, spread over the whole history: with E evidence sessions among N, the
  i-th sits at a seeded position in the i-th of E equal stretches (early, middle, late), and an earlier fact
  (first city, first job) always precedes its update.

Sessions are numbered and dated (a seeded start in the first half of 2023, then 1-6 days apart). The context:

    Session 7 (2023-05-14, Sunday):
    Maya: one utterance per line (internal newlines collapsed, so line-based segmenters see utterances)
    Tom: ...

with a blank line between sessions. Nothing else appears: real chitchat utterances, evidence lines and headers.

Length: chitchat sessions are added until the history reaches request.context_tokens (counted with
request.count_tokens; the last session is cut to the turns that fit, so the history lands within a few percent
below the target). Builder arg `sessions: N` instead fixes the number of sessions (evidence included; at least
the evidence sessions). With neither, the history has twice as many sessions as evidence sessions. Evidence
sessions are always kept, so a target shorter than the evidence alone gives the evidence alone.

Questions (turns; category = type, LongMemEval's types), `questions_per_type` of each (default 2, at most 4),
sampled by seed and asked in a seeded order:

- `single-session`: a fact stated in one session (pet's name, favourite food, hobby, planned trip).
- `multi-session`: two facts from two sessions (the two cities or the two jobs someone has had, the names of
  both pets, how many pets someone adopted).
- `temporal`: when something happened (answered with the session's date, in three spellings) or which of two
  events came first.
- `knowledge-update`: where someone lives now, or their job now, after a later session changed it; the reference
  is the latest value, and the older one is in the history too (meta["old"]).
- `abstention`: the name of a pet kind or vehicle nobody ever mentions (meta["absent"] is that word, which
  appears nowhere in the history); the reference is "not mentioned" and meta["abstention"] is set, which the
  longconvqa_f1 scorer turns into "does the reply say it is not mentioned".

Everything is a function of BuildRequest.seed and the episode's index.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.metrics import NOT_MENTIONED
from cachebench.tasks.builders import longconvqa_templates as tpl

TYPES = ("single-session", "multi-session", "temporal", "knowledge-update", "abstention")
MIN_TURNS = 4  # a chitchat conversation shorter than this is never a session
MAX_QUESTIONS_PER_TYPE = 4
HEADER_SAMPLE = "Session 10 (2023-05-14, Wednesday):"  # for token estimates before the dates are known
CLOSE_ENOUGH = 0.02  # stop adding chitchat once the history is this close to the target (fraction)
SKIP_LIMIT = 200  # conversations tried for the last, partial session before the history is left short


@dataclass(frozen=True)
class Conversation:
    turns: tuple[tuple[int, str], ...]  # (sender 0 or 1, utterance on one line)
    lowered: str  # the whole text, lower case, for the episode's word filters


@cache
def load_conversations() -> tuple[Conversation, ...]:
    """Usable chitchat conversations in file order: two senders, at least MIN_TURNS turns, no CONFLICTS."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("longconvqa.sessions needs the chitchat-dataset package: pip install 'cachebench[data]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the chitchat dataset ({type(exc).__name__}: {exc})") from exc
    conversations = []
    for record in data.values():
        senders: dict[str, int] = {}
        turns = []
        for turn in record.get("messages") or []:
            text = " ".join(" ".join(str(m.get("text") or "") for m in turn).split())
            if not text or not turn:
                continue
            sender = senders.setdefault(str(turn[0].get("sender")), len(senders))
            turns.append((sender, text))
        if len(senders) != 2 or len(turns) < MIN_TURNS:
            continue
        lowered = "\n".join(text for _, text in turns).lower()
        if tpl.CONFLICTS.search(lowered):
            continue
        conversations.append(Conversation(tuple(turns), lowered))
    return tuple(conversations)


def utterances() -> set[str]:
    """Every utterance a chitchat session may contain (for tests: nothing else but evidence lines and headers)."""
    return {text for conversation in load_conversations() for _, text in conversation.turns}


@dataclass
class Profile:
    """One speaker's facts."""

    speaker: tpl.Speaker
    cities: tuple[str, str]  # lived in, then moved to
    jobs: tuple[str, str]  # first job, then new job
    pets: tuple[tuple[str, str], tuple[str, str]]  # (kind, name) twice
    food: str
    hobby: str
    country: str


@dataclass
class Question:
    """A question before the layout: `answer` gets each needed session's date (keyed like `needs`)."""

    category: str
    text: str
    needs: tuple[tuple[int, str], ...]  # (speaker index, evidence session key)
    answer: Callable[[dict[tuple[int, str], dt.date]], list[str]]
    meta: dict[str, object] = field(default_factory=dict)


# evidence session key -> (template kind, how to read the value from a profile, pet kind or "")
def _evidence(profile: Profile, key: str) -> tuple[str, str, str]:
    return {
        "home": ("home", profile.cities[0], ""),
        "move": ("move", profile.cities[1], ""),
        "job": ("job", profile.jobs[0], ""),
        "newjob": ("newjob", profile.jobs[1], ""),
        "pet1": ("pet", profile.pets[0][1], profile.pets[0][0]),
        "pet2": ("pet", profile.pets[1][1], profile.pets[1][0]),
        "food": ("food", profile.food, ""),
        "hobby": ("hobby", profile.hobby, ""),
        "trip": ("trip", profile.country, ""),
    }[key]


UPDATES = (("home", "move"), ("job", "newjob"))  # the first must come before the second


def build(request: BuildRequest) -> list[Episode]:
    """request.episodes episodes, each its own history and questions."""
    per_type = int(request.args.get("questions_per_type", 2))
    if not 1 <= per_type <= MAX_QUESTIONS_PER_TYPE:
        raise UsageError(f"longconvqa.sessions: questions_per_type must be 1-{MAX_QUESTIONS_PER_TYPE}, got {per_type}")
    session_turns = int(request.args.get("session_turns", 12))
    if session_turns < 2:
        raise UsageError(f"longconvqa.sessions: session_turns must be at least 2, got {session_turns}")
    sessions = request.args.get("sessions")
    conversations = load_conversations()
    return [
        _episode(request, index, per_type, session_turns, None if sessions is None else int(sessions), conversations)
        for index in range(max(0, request.episodes))
    ]


def _profiles(rng: random.Random) -> list[Profile]:
    speakers = rng.sample(tpl.SPEAKERS, 2)
    cities, jobs = rng.sample(tpl.CITIES, 4), rng.sample(tpl.JOBS, 4)
    names = rng.sample(tpl.PET_NAMES, 4)
    foods, hobbies, countries = rng.sample(tpl.FOODS, 2), rng.sample(tpl.HOBBIES, 2), rng.sample(tpl.COUNTRIES, 2)
    profiles = []
    for i, speaker in enumerate(speakers):
        kinds = rng.sample(tpl.PET_KINDS, 2)
        profiles.append(
            Profile(
                speaker=speaker,
                cities=(cities[2 * i], cities[2 * i + 1]),
                jobs=(jobs[2 * i], jobs[2 * i + 1]),
                pets=((kinds[0], names[2 * i]), (kinds[1], names[2 * i + 1])),
                food=foods[i],
                hobby=hobbies[i],
                country=countries[i],
            )
        )
    return profiles


def date_references(day: dt.date) -> list[str]:
    """A session date as the references of a "when" question: 14 May 2023, May 14, 2023, 2023-05-14."""
    return [f"{day.day} {day:%B %Y}", f"{day:%B} {day.day}, {day.year}", day.isoformat()]


def _candidates(profiles: Sequence[Profile]) -> dict[str, list[Question]]:
    """Every question the episode could ask, by type (abstention comes later: it depends on the history)."""
    out: dict[str, list[Question]] = {category: [] for category in TYPES}
    for i, p in enumerate(profiles):
        name, pos = p.speaker.name, p.speaker.possessive
        (kind1, pet1), (kind2, pet2) = p.pets
        out["single-session"] += [
            Question("single-session", f"What is the name of {name}'s {kind1}?", ((i, "pet1"),), lambda d, v=pet1: [v]),
            Question("single-session", f"What is {name}'s favorite food?", ((i, "food"),), lambda d, v=p.food: [v]),
            Question("single-session", f"Which hobby did {name} take up?", ((i, "hobby"),), lambda d, v=p.hobby: [v]),
            Question("single-session", f"Which country is {name} planning a trip to?", ((i, "trip"),),
                     lambda d, v=p.country: [v]),
        ]  # fmt: skip
        out["multi-session"] += [
            Question("multi-session", f"Which two cities has {name} lived in?", ((i, "home"), (i, "move")),
                     lambda d, c=p.cities: [f"{c[0]} and {c[1]}"]),
            Question("multi-session", f"Which two jobs has {name} had?", ((i, "job"), (i, "newjob")),
                     lambda d, j=p.jobs: [f"{j[0]} and {j[1]}"]),
            Question("multi-session", f"What are the names of {name}'s {kind1} and {kind2}?",
                     ((i, "pet1"), (i, "pet2")), lambda d, a=pet1, b=pet2: [f"{a} and {b}"]),
            Question("multi-session", f"How many pets has {name} adopted?", ((i, "pet1"), (i, "pet2")),
                     lambda d: ["two", "2"]),
        ]  # fmt: skip
        events = [
            ("pet1", f"adopt {pos} {kind1}", f"adopting {pet1}", pet1),
            ("move", f"move to {p.cities[1]}", f"moving to {p.cities[1]}", p.cities[1]),
            ("hobby", f"take up {p.hobby}", f"taking up {p.hobby}", p.hobby),
            ("newjob", f"start working as a {p.jobs[1]}", f"starting work as a {p.jobs[1]}", p.jobs[1]),
        ]
        for key, verb, _, _ in events:
            when = f"When did {name} {verb}?"
            out["temporal"].append(Question("temporal", when, ((i, key),), lambda d, k=(i, key): date_references(d[k])))
        for a in range(len(events)):
            for b in range(a + 1, len(events)):
                (key_a, _, gerund_a, value_a), (key_b, _, gerund_b, value_b) = events[a], events[b]

                def first(d, ka=(i, key_a), kb=(i, key_b), ga=gerund_a, gb=gerund_b, va=value_a, vb=value_b):
                    return [ga, va] if d[ka] < d[kb] else [gb, vb]

                out["temporal"].append(
                    Question("temporal", f"Which happened first: {name} {gerund_a} or {name} {gerund_b}?",
                             ((i, key_a), (i, key_b)), first)
                )  # fmt: skip
        out["knowledge-update"] += [
            Question("knowledge-update", f"Which city does {name} live in now?", ((i, "home"), (i, "move")),
                     lambda d, v=p.cities[1]: [v], {"old": p.cities[0]}),
            Question("knowledge-update", f"What is {name}'s job now?", ((i, "job"), (i, "newjob")),
                     lambda d, v=p.jobs[1]: [v], {"old": p.jobs[0]}),
        ]  # fmt: skip
    return out


def _abstention_candidates(profiles: Sequence[Profile]) -> list[Question]:
    out = []
    for p in profiles:
        name, pos = p.speaker.name, p.speaker.possessive
        for animal in tpl.ABSENT_PETS:
            out.append(Question("abstention", f"What is the name of {name}'s {animal}?", (),
                                lambda d: [NOT_MENTIONED], {"abstention": True, "absent": animal}))  # fmt: skip
        for vehicle in tpl.ABSENT_VEHICLES:
            out.append(Question("abstention", f"What did {name} name {pos} {vehicle}?", (),
                                lambda d: [NOT_MENTIONED], {"abstention": True, "absent": vehicle}))  # fmt: skip
    return out


def _word_filter(words: Sequence[str]) -> re.Pattern[str]:
    """Any of `words` as a whole word or phrase (plural -s allowed), case-insensitive."""
    alternatives = "|".join(re.escape(word.lower()) for word in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})s?\b")


def _episode(
    request: BuildRequest,
    index: int,
    per_type: int,
    session_turns: int,
    sessions: int | None,
    conversations: Sequence[Conversation],
) -> Episode:
    rng = random.Random(request.seed * 1_000_003 + index)
    profiles = _profiles(rng)
    candidates = _candidates(profiles)
    questions = [q for category in TYPES[:-1] for q in rng.sample(candidates[category], per_type)]
    # Abstention words must be new to the history: pick them before choosing chitchat, which then avoids them.
    abstain_pool = _abstention_candidates(profiles)
    rng.shuffle(abstain_pool)
    abstentions: list[Question] = []
    for question in abstain_pool:
        if len(abstentions) < per_type and question.meta["absent"] not in {q.meta["absent"] for q in abstentions}:
            abstentions.append(question)
    questions += abstentions

    needed = list(dict.fromkeys(key for q in questions for key in q.needs))
    rng.shuffle(needed)
    for i in range(2):
        for before, after in UPDATES:
            if (i, before) in needed and (i, after) in needed:
                a, b = needed.index((i, before)), needed.index((i, after))
                if a > b:
                    needed[a], needed[b] = needed[b], needed[a]
    evidence = [_evidence_lines(profiles, key, rng) for key in needed]

    reserved = [word for p in profiles for word in (p.speaker.name, *p.cities, *p.jobs, p.food, p.hobby, p.country,
                                                    *(name for _, name in p.pets))]  # fmt: skip
    reserved += [str(q.meta["absent"]) for q in abstentions]
    avoid = _word_filter(reserved)
    names = [p.speaker.name for p in profiles]
    chitchat = _chitchat(conversations, avoid, evidence, names, session_turns, sessions, request, rng)

    total = len(evidence) + len(chitchat)
    slots = [rng.randrange(total * i // len(evidence), total * (i + 1) // len(evidence)) for i in range(len(evidence))]
    order: list[list[tuple[int, str]]] = []
    evidence_at = dict(zip(slots, range(len(evidence)), strict=True))
    chitchat_iter = iter(chitchat)
    for position in range(total):
        order.append(evidence[evidence_at[position]] if position in evidence_at else next(chitchat_iter))
    day = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(180))
    dates, blocks = [], []
    for number, lines in enumerate(order, start=1):
        if number > 1:
            day += dt.timedelta(days=rng.randint(1, 6))
        dates.append(day)
        blocks.append(_render(number, day, lines, names))
    session_date = {needed[e]: dates[slot] for slot, e in evidence_at.items()}

    order_of_turns = list(range(len(questions)))
    rng.shuffle(order_of_turns)
    turns = []
    for q_index in order_of_turns:
        question = questions[q_index]
        meta = dict(question.meta)
        meta["abstention"] = bool(meta.get("abstention", False))
        meta["sessions"] = sorted(slot + 1 for slot, e in evidence_at.items() if needed[e] in question.needs)
        turns.append(Turn(fields={"input": question.text}, references=question.answer(session_date),
                          category=question.category, meta=meta))  # fmt: skip
    fields = {"context": "\n\n".join(blocks), "speakers": f"{names[0]} and {names[1]}"}
    return Episode(f"longconvqa-{request.seed}-{index}", fields, turns)


def _evidence_lines(profiles: Sequence[Profile], key: tuple[int, str], rng: random.Random) -> list[tuple[int, str]]:
    speaker, name = key
    kind, value, pet_kind = _evidence(profiles[speaker], name)
    wording = rng.choice(tpl.EVIDENCE[kind])
    return [(speaker if who == "self" else 1 - speaker, tpl.fill(text, value, pet_kind)) for who, text in wording]


def _render(number: int, day: dt.date, lines: Sequence[tuple[int, str]], names: Sequence[str]) -> str:
    header = f"Session {number} ({day.isoformat()}, {day:%A}):"
    return "\n".join([header, *(f"{names[speaker]}: {text}" for speaker, text in lines)])


def _chitchat(
    conversations: Sequence[Conversation],
    avoid: re.Pattern[str],
    evidence: Sequence[list[tuple[int, str]]],
    names: Sequence[str],
    session_turns: int,
    sessions: int | None,
    request: BuildRequest,
    rng: random.Random,
) -> list[list[tuple[int, str]]]:
    """Chitchat sessions: `sessions` minus the evidence ones, or as many as reach request.context_tokens."""
    order = list(range(len(conversations)))
    rng.shuffle(order)
    usable = (index for index in order if not avoid.search(conversations[index].lowered))

    def session(index: int) -> list[tuple[int, str]]:
        flip = rng.random() < 0.5
        return [(sender ^ flip, text) for sender, text in conversations[index].turns[:session_turns]]

    if sessions is not None or request.context_tokens <= 0:
        wanted = 2 * len(evidence) if sessions is None else sessions
        if wanted < len(evidence):
            raise UsageError(f"longconvqa.sessions: sessions must be at least the {len(evidence)} evidence sessions, "
                             f"got {wanted}")  # fmt: skip
        return [session(next(usable)) for _ in range(wanted - len(evidence))]

    count = request.count_tokens
    separator = count("\n\n")

    def tokens(lines: Sequence[tuple[int, str]]) -> int:
        return count(_render(10, dt.date(2023, 5, 17), lines, names)) + separator

    total = sum(tokens(lines) for lines in evidence)
    chosen: list[list[tuple[int, str]]] = []
    skipped = 0
    for index in usable:
        if request.context_tokens - total < CLOSE_ENOUGH * request.context_tokens or skipped >= SKIP_LIMIT:
            break
        lines = session(index)
        size = tokens(lines)
        if total + size <= request.context_tokens:
            chosen.append(lines)
            total += size
            continue
        for cut in range(len(lines) - 1, 1, -1):  # the longest opening of at least two turns that fits
            size = tokens(lines[:cut])
            if total + size <= request.context_tokens:
                chosen.append(lines[:cut])
                total += size
                break
        else:
            skipped += 1
            continue
        break
    return chosen
