"""What a task hands the runner: episodes of a shared context and its turns, built from a request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    """One question asked against the shared context."""

    fields: dict[str, str]  # template fields for the query, at least "input"
    references: list[str]  # correct answers; a scorer decides how a prediction matches them
    category: str = ""  # what the turn probes (needle depth, question type, mixed-task sub-task)
    meta: dict[str, Any] = field(default_factory=dict)  # scorer extras (e.g. all functions of a repository)


@dataclass
class Episode:
    """A shared context (one document, list or conversation) and the turns asked about it.

    A chunked context (retrieval: a list of documents) sets `chunks`; the runner then tokenizes each chunk on its
    own and joins them with the task's chunk joiner in place of {context}, so a reuse method can find each chunk's
    tokens again in any episode, at any position. fields["context"] still holds the joined text.
    """

    episode_id: str
    fields: dict[str, str]  # template fields for the context, at least "context"
    turns: list[Turn]
    chunks: list[str] | None = None  # the context's documents, in this episode's order


@dataclass(frozen=True)
class BuildRequest:
    """Everything a builder may use: how many episodes, how long, which seed, and how to count tokens."""

    episodes: int
    context_tokens: int
    seed: int
    count_tokens: Callable[[str], int]
    args: Mapping[str, Any]  # the task YAML's source.args
    data_path: str | None = None  # a local file in the real dataset's format, instead of the hub

