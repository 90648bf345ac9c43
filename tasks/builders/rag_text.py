"""Text helpers shared by the rag builders: sentences, short chunks cut at sentence ends, answer look-ups.

A retrieval chunk must read as a small self-contained document (a reuse method caches it once and finds it again
in other requests), so long passages are cut at sentence boundaries rather than at a token count.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence

JOINER = "\n\n"  # joins an episode's chunks; the rag YAMLs keep template.chunk_joiner equal to it (tested)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")
_WORD = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = frozenset((
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "many", "much", "does", "did", "do", "is",
    "are", "was", "were", "been", "be", "has", "have", "had", "the", "a", "an", "of", "in", "on", "at", "to", "for",
    "from", "by", "with", "and", "or", "that", "this", "these", "those", "than", "then", "into", "onto", "over",
    "under", "after", "before", "about", "its", "his", "her", "their", "there", "name", "names", "full", "first",
    "last", "person", "people", "one",
))  # fmt: skip


def clean(text: str) -> str:
    """HTML entities decoded (the passages carry "&#160;") and runs of white space made single spaces."""
    return " ".join(html.unescape(text).replace("\xa0", " ").split())


def sentences(text: str) -> list[str]:
    """The text's sentences, cleaned; a line break always ends one."""
    return [piece for piece in (clean(part) for part in _SENTENCE_END.split(text)) if piece]


def leading_sentences(parts: Sequence[str], max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """The longest run of sentences from the start whose text (joined by spaces) fits `max_tokens`."""
    kept: list[str] = []
    for part in parts:
        if count_tokens(" ".join([*kept, part])) > max_tokens:
            break
        kept.append(part)
    return kept


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words ("2" is not found in "24"), ignoring case."""
    phrase = clean(phrase)
    if not phrase:
        return False
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def content_words(text: str) -> set[str]:
    """Lower-cased words of three or more characters that are not question or function words."""
    return {word for word in _WORD.findall(text.lower()) if len(word) > 2 and word not in _FUNCTION_WORDS}


def lexical_support(question: str, sentence: str) -> float:
    """Share of the question's content words found in the sentence (1.0 for a question without any)."""
    wanted = content_words(question)
    return len(wanted & content_words(sentence)) / len(wanted) if wanted else 1.0


def join_chunks(chunks: Sequence[str]) -> str:
    """fields["context"] of a chunked episode: its chunks joined as the runner joins them."""
    return JOINER.join(chunks)
