"""Scorers: (prediction, references, turn meta) -> score in [0, 1].

Each follows the scoring rule of the benchmark whose data it scores (SCBench / InfiniteBench for the SCBench
configs, SQuAD-style token F1 for extractive QA). ROUGE and BLEU come from libraries (rouge-score, nltk), imported
only when such a task is scored.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from cachebench.errors import unknown_name

Scorer = Callable[[str, Sequence[str], Mapping[str, Any]], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+\.\d+|\d+")
_ZH_PUNCTUATION = set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～"
    "｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(predicted: Sequence[str], truth: Sequence[str]) -> float:
    overlap = sum((Counter(predicted) & Counter(truth)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Best token F1 over the references, after SQuAD normalisation."""
    predicted = normalize_answer(prediction).split()
    return max((_f1(predicted, normalize_answer(ref).split()) for ref in references), default=0.0)


def qa_f1_zh(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Character-level F1 for Chinese answers (punctuation and spaces removed)."""

    def chars(text: str) -> list[str]:
        drop = set(string.punctuation) | _ZH_PUNCTUATION
        return [ch for ch in text.lower() if ch not in drop and not ch.isspace()]

    return max((_f1(chars(prediction), chars(ref)) for ref in references), default=0.0)


def substring(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """1 when a reference appears verbatim in the prediction (SCBench key-value and prefix-suffix retrieval)."""
    return float(any(ref in prediction for ref in references))


def substring_any_ci(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """1 when any reference appears, ignoring case (SCBench En.Dia and many-shot ICL)."""
    upper = prediction.upper()
    return float(any(ref.upper() in upper for ref in references))


def string_match_all(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Fraction of the references found in the prediction, ignoring case (RULER / SCBench variable tracking)."""
    if not references:
        return 0.0
    lower = prediction.lower()
    return sum(ref.lower() in lower for ref in references) / len(references)


def first_int(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """1 when the first run of digits in the prediction equals the reference (passkey retrieval)."""
    match = re.search(r"\d+", prediction)
    return float(match is not None and bool(references) and match.group(0) == str(references[0]).strip())


def math_find(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """1 when the first number in the prediction equals the reference number (SCBench Math.Find)."""
    match = _NUMBER.search(prediction)
    if match is None or not references:
        return 0.0
    try:
        truth = float(references[0])
    except ValueError:
        return 0.0
    found = float(match.group(0))
    return float(int(found) == int(truth) if truth.is_integer() else found == truth)


def choice(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Multiple choice (SCBench En.MultiChoice): the chosen option letter, or the answer text, must be correct.

    References hold the correct option's text and its letter. The letter is read from the start of the reply,
    else after an "answer is"/"answer:" phrase, else from the first standalone A-D word.
    """
    text = prediction.strip()
    if not text:
        return 0.0
    letters = {ref for ref in references if ref in ("A", "B", "C", "D")}
    if text[0] in "ABCD" and (len(text) == 1 or not text[1].isalpha()):
        return float(text[0] in letters)
    if text in references:
        return 1.0
    flat = " ".join(re.sub(r"[\n\"'.,?!{}]", " ", text).split())
    lowered = flat.lower()
    for phrase in ("answer is:", "answer:", "answer is", "option is"):
        at = lowered.find(phrase)
        if at >= 0:
            rest = flat[at + len(phrase) :].strip()
            return float(any(rest.startswith(ref) for ref in references))
    for word in flat.split():
        if word in ("A", "B", "C", "D"):
            return float(word in letters)
    return 0.0


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)


def rouge_lsum(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """ROUGE-Lsum F-measure from rouge-score, best over references (SCBench En.Sum)."""
    scorer = _rouge_scorer()
    return max((scorer.score(ref, prediction)["rougeLsum"].fmeasure for ref in references), default=0.0)


@cache
def _rouge_l_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """ROUGE-L F-measure from rouge-score, best over references (LongBench / CacheBlend SAMSum).

    Unlike ROUGE-Lsum it takes the longest common subsequence over the whole text, not per line.
    """
    scorer = _rouge_l_scorer()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references), default=0.0)


def _code_block(text: str) -> str:
    """The first fenced code block of a reply, or the whole reply when there is none."""
    match = re.search(r"^```[\w+-]*\s*\n(.*?)^```", text.strip(), re.DOTALL | re.MULTILINE)
    return match.group(1) if match else text.strip()


def repoqa(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """SCBench RepoQA pass@1 at similarity 0.8: the reply's function must be most similar (sentence BLEU) to the
    asked-for function among all functions asked about in that repository, with BLEU >= 0.8."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    candidates: Mapping[str, str] = meta.get("needles") or {"target": references[0]}
    target = meta.get("name", "target")
    produced = _code_block(prediction).split()
    smoothing = SmoothingFunction().method4
    best_name, best_score = None, 0.0
    for name, code in candidates.items():
        score = sentence_bleu([code.split()], produced, smoothing_function=smoothing) if produced else 0.0
        if score > best_score:
            best_name, best_score = name, score
    return float(best_name == target and best_score >= 0.8)


# Long-conversation QA (the longconvqa family: our generated sessions, LongMemEval, LoCoMo).
NOT_MENTIONED = "not mentioned"  # the reference answer of every abstention item
MULTI_ANSWER_CATEGORIES = ("multi-hop",)  # LoCoMo's category 1: a comma-separated list of sub-answers
# A reply that says the conversation does not hold the answer. LongMemEval's judge accepts any reply that
# "correctly identifies the question as unanswerable"; LoCoMo's category-5 check accepts "not mentioned" and
# "no information available". This covers those and their common paraphrases: "not mentioned/stated/specified/
# said/known/provided/given/discussed/available" (also after "n't" or "never", optionally with "been"),
# "no information/mention/record/details", "unknown", "don't/doesn't/didn't know/say/mention/specify/state",
# "cannot/can't be determined/answered", "unanswerable", "not enough information".
UNKNOWN_REPLY = re.compile(
    r"\b(?:not|never)\s+(?:been\s+)?(?:mentioned|stated|specified|said|known|provided|given|discussed|available)\b"
    r"|n't\s+(?:been\s+)?(?:mentioned|stated|specified|said|known|provided|given|discussed|available)\b"
    r"|\bno\s+(?:information|mention|record|details?)\b"
    r"|\bunknown\b"
    r"|\b(?:do|does|did)(?:\s+not|n't)\s+(?:know|say|mention|specify|state)\b"
    r"|\b(?:cannot|can't|can\s+not)\s+be\s+(?:determined|answered)\b"
    r"|\bunanswerable\b"
    r"|\bnot\s+enough\s+information\b"
)


def says_unknown(prediction: str) -> bool:
    """True when the reply signals that the answer is not in the conversation (UNKNOWN_REPLY)."""
    return UNKNOWN_REPLY.search(prediction.lower().replace("\u2019", "'")) is not None


def longconvqa_meta(category: str, references: Sequence[str]) -> dict[str, bool]:
    """The scorer meta of a longconvqa item from what a result row keeps (`show` recomputes EM with it):
    abstention items have the single reference NOT_MENTIONED; LoCoMo multi-hop answers are comma lists."""
    return {"abstention": list(references) == [NOT_MENTIONED], "multi_answer": category in MULTI_ANSWER_CATEGORIES}


def _parts_score(
    prediction: str, reference: str, meta: Mapping[str, Any], match: Callable[[list[str], list[str]], float]
) -> float:
    """One reference: `match` on normalised tokens, or LoCoMo's multi-hop rule when meta["multi_answer"]: split
    both on commas and average, over the reference's parts, the best match among the prediction's parts."""
    if not meta.get("multi_answer"):
        return match(normalize_answer(prediction).split(), normalize_answer(reference).split())
    predicted = [normalize_answer(part).split() for part in prediction.split(",")]
    truths = [normalize_answer(part).split() for part in reference.split(",")]
    return sum(max(match(p, t) for p in predicted) for t in truths) / len(truths)


def _exact(predicted: Sequence[str], truth: Sequence[str]) -> float:
    return float(list(predicted) == list(truth))


def longconvqa_f1(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Token F1 (SQuAD normalisation), best over references; abstention items (meta["abstention"]) score 1 when
    the reply says the conversation does not tell (UNKNOWN_REPLY), else 0, as LongMemEval and LoCoMo score them."""
    if meta.get("abstention"):
        return float(says_unknown(prediction))
    return max((_parts_score(prediction, ref, meta, _f1) for ref in references), default=0.0)


def longconvqa_em(prediction: str, references: Sequence[str], meta: Mapping[str, Any]) -> float:
    """Exact match after SQuAD normalisation, best over references, with longconvqa_f1's abstention and
    multi-hop rules (a multi-hop item scores the fraction of its parts matched exactly)."""
    if meta.get("abstention"):
        return float(says_unknown(prediction))
    return max((_parts_score(prediction, ref, meta, _exact) for ref in references), default=0.0)


SCORERS: dict[str, Scorer] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "substring": substring,
    "substring_any_ci": substring_any_ci,
    "string_match_all": string_match_all,
    "first_int": first_int,
    "math_find": math_find,
    "choice": choice,
    "rouge_lsum": rouge_lsum,
    "rouge_l": rouge_l,
    "repoqa": repoqa,
    "longconvqa_f1": longconvqa_f1,
}

# Scorers whose library is optional (the `data` extra): checked before a run starts, not mid-run.
SCORER_REQUIRES = {"rouge_lsum": "rouge_score", "rouge_l": "rouge_score", "repoqa": "nltk"}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise unknown_name("metric", name, SCORERS)
    return SCORERS[name]
