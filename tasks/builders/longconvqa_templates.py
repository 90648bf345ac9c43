"""What longconvqa.sessions writes itself: the two speakers, the facts they state, the short evidence sessions
that state them, and the words that keep real chitchat sessions from contradicting them.

An evidence session is a few lines in which one speaker (`self`) states one fact about themselves and the other
(`other`) answers. Each fact kind has several wordings; the builder picks one by seed. A wording never names
another fact of the same speaker, so a question that needs two facts needs two sessions.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Speaker(NamedTuple):
    name: str
    subject: str  # he / she
    possessive: str  # his / her


SPEAKERS = (
    Speaker("Maya", "she", "her"), Speaker("Tom", "he", "his"), Speaker("Priya", "she", "her"),
    Speaker("Daniel", "he", "his"), Speaker("Lena", "she", "her"), Speaker("Omar", "he", "his"),
    Speaker("Sofia", "she", "her"), Speaker("Marcus", "he", "his"), Speaker("Nora", "she", "her"),
    Speaker("Felix", "he", "his"), Speaker("Ingrid", "she", "her"), Speaker("Tariq", "he", "his"),
)  # fmt: skip

CITIES = (
    "Austin", "Denver", "Portland", "Chicago", "Seattle", "Boston", "Phoenix", "Nashville", "Atlanta", "Minneapolis",
    "Pittsburgh", "Sacramento", "Milwaukee", "Baltimore", "Tucson", "Raleigh",
)  # fmt: skip
JOBS = (
    "nurse", "pilot", "accountant", "electrician", "librarian", "architect", "pharmacist", "firefighter",
    "dentist", "paramedic", "veterinarian", "plumber", "journalist", "carpenter", "translator", "baker",
)  # fmt: skip
PET_KINDS = ("dog", "cat", "rabbit")
PET_NAMES = (
    "Biscuit", "Pepper", "Mochi", "Juniper", "Waffles", "Clover", "Pickles", "Nutmeg", "Ziggy", "Pumpkin",
    "Maple", "Tofu", "Olive", "Sprocket", "Noodle", "Hazel",
)  # fmt: skip
FOODS = (
    "lasagna", "ramen", "tacos", "sushi", "pad thai", "paella", "dumplings", "enchiladas", "risotto", "pho",
    "falafel", "gnocchi",
)  # fmt: skip
HOBBIES = (
    "pottery", "rock climbing", "archery", "salsa dancing", "beekeeping", "knitting", "birdwatching", "fencing",
    "woodworking", "calligraphy", "chess", "juggling",
)  # fmt: skip
COUNTRIES = (
    "Portugal", "Japan", "Iceland", "Peru", "Greece", "Vietnam", "Morocco", "Norway", "Chile", "Croatia",
    "Kenya", "Ireland",
)  # fmt: skip

# Abstention asks about something of this kind that nobody ever mentions: the builder only asks about a word
# that appears nowhere in the episode's history (chitchat sessions that mention it are left out).
ABSENT_PETS = ("iguana", "ferret", "hamster", "tortoise", "gecko", "hedgehog", "chinchilla", "cockatoo", "axolotl")
ABSENT_VEHICLES = ("sailboat", "motorcycle", "canoe", "camper van")

# Real chitchat sessions that state where someone lives, their pets, job, favourite food, hobbies or trips would
# contradict the evidence sessions (the speakers are ours), so they are left out, as LongMemEval's cleaned
# haystacks drop sessions that interfere with answers.
CONFLICTS = re.compile(
    r"\b(?:live|lives|living|lived) in\b|\bmoved? to\b|\bfavou?rite (?:food|meal|dish)\b"
    r"|\b(?:dogs?|cats?|rabbits?|pets?|pupp(?:y|ies)|kittens?)\b|\b(?:my job|i work as|work as an?)\b"
    r"|\btrip to\b|\bhobby\b|\bhobbies\b|\b(?:took|take) up\b",
    re.IGNORECASE,
)

# Fact kind -> wordings; each wording is a list of (who, text). Placeholders: {value} (the fact), {kind} (a
# pet's kind), {Value} (capitalised value). Kinds: home (a city lived in), move (a later city), job (a job),
# newjob (a later job), pet (a pet adopted that day), food (favourite food), hobby (taken up that day), trip (a
# planned trip). `move`, `newjob`, `pet` and `hobby` say "today", so the session's date is the event's date.
EVIDENCE: dict[str, tuple[tuple[tuple[str, str], ...], ...]] = {
    "home": (
        (("self", "I've been living in {value} for a few years now and I still love the food scene there."),
         ("other", "{value} sounds like a fun place to live.")),
        (("other", "So where are you living these days?"),
         ("self", "I live in {value}, right near the river."),
         ("other", "Nice, I've always wanted to visit {value}.")),
    ),
    "move": (
        (("self", "Big news: I moved to {value} today! The new apartment is full of boxes."),
         ("other", "Congrats on the move, I hope you like {value}.")),
        (("other", "How did moving day go?"),
         ("self", "Exhausting, but as of today I officially live in {value}."),
         ("other", "Welcome to your new home!")),
    ),
    "job": (
        (("self", "Work was busy today, being a {value} is never boring."),
         ("other", "I bet. How long have you worked as a {value}?"),
         ("self", "Almost three years now.")),
        (("other", "What do you do for work again?"),
         ("self", "I'm a {value}. Long shifts, but I like it.")),
    ),
    "newjob": (
        (("self", "Today was my first day at my new job. I'm a {value} now!"),
         ("other", "That's a big change, congratulations!")),
        (("self", "I finally switched careers: I started working as a {value} today."),
         ("other", "Wow, good for you. How was the first day?"),
         ("self", "Tiring, but I think I'll love it.")),
    ),
    "pet": (
        (("self", "I adopted a {kind} from the shelter today and named it {value}."),
         ("other", "{value} is such a cute name for a {kind}!")),
        (("other", "You sound happy, what's new?"),
         ("self", "I brought home a {kind} today. Everyone, meet {value}!"),
         ("other", "Send me pictures of {value}!")),
    ),
    "food": (
        (("self", "I could eat {value} every day, it's my favorite food."),
         ("other", "Good choice, I like {value} too.")),
        (("other", "What's your favorite food?"),
         ("self", "Definitely {value}. Nothing beats it.")),
    ),
    "hobby": (
        (("self", "I took up {value} today, my first class was this morning."),
         ("other", "{Value} sounds fun, tell me how it goes.")),
        (("other", "Did you do anything new today?"),
         ("self", "Yes, I started {value} today. I think it will be my new hobby.")),
    ),
    "trip": (
        (("self", "I'm planning a trip to {value} next spring."),
         ("other", "{value}? That will be amazing.")),
        (("other", "Any travel plans this year?"),
         ("self", "I'm saving up to visit {value}, I've wanted to go for ages.")),
    ),
}  # fmt: skip


def fill(text: str, value: str, kind: str = "") -> str:
    return text.format(value=value, Value=value[:1].upper() + value[1:], kind=kind)


def evidence_patterns() -> list[re.Pattern[str]]:
    """Every evidence line as a regular expression (placeholders match any text): what tests use to tell our
    lines from real chitchat utterances."""
    patterns = []
    for wordings in EVIDENCE.values():
        for wording in wordings:
            for _, text in wording:
                parts = re.split(r"(\{value\}|\{Value\}|\{kind\})", text)
                body = "".join(".+" if part in ("{value}", "{Value}", "{kind}") else re.escape(part) for part in parts)
                patterns.append(re.compile(f"^{body}$"))
    return patterns
