"""Scorers follow the rules of the benchmarks they score."""

from __future__ import annotations

import pytest

from cachebench.errors import UsageError
from cachebench.metrics import get_scorer, normalize_answer


def score(name, prediction, references, meta=None):
    return get_scorer(name)(prediction, references, meta or {})


def test_qa_f1_uses_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert score("qa_f1", "the Eiffel tower", ["Eiffel Tower"]) == 1.0
    assert score("qa_f1", "Eiffel", ["Eiffel Tower", "Paris"]) == pytest.approx(2 / 3)
    assert score("qa_f1", "London", ["Paris"]) == 0.0


def test_retrieval_scorers():
    assert score("first_int", "The pass key is 73691. Remember", ["73691"]) == 1.0
    assert score("first_int", "It is 7369 or 73691", ["73691"]) == 0.0
    assert score("substring", 'value: "abc-123"', ["abc-123"]) == 1.0
    assert score("substring", "ABC-123", ["abc-123"]) == 0.0  # retrieval is exact
    assert score("substring_any_ci", "answer: paris", ["PARIS", "Lyon"]) == 1.0
    assert score("string_match_all", "VAR ABCDE and fghij", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert score("math_find", "The largest is 97.", ["97"]) == 1.0
    assert score("math_find", "about 3.5", ["3.5"]) == 1.0 and score("math_find", "none", ["3"]) == 0.0


def test_choice_reads_the_letter_the_model_chose():
    refs = ["Paris", "B"]
    assert score("choice", "B. Paris", refs) == 1.0
    assert score("choice", "A", refs) == 0.0
    assert score("choice", "I think the answer is: B", refs) == 1.0
    assert score("choice", "The answer is Paris.", refs) == 1.0
    assert score("choice", "Paris", refs) == 1.0
    assert score("choice", "Perhaps option C fits", refs) == 0.0


def test_rouge_lsum_and_chinese_f1():
    assert score("rouge_lsum", "the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    partial = score("rouge_lsum", "the cat sat", ["the cat sat on the mat"])
    assert 0.5 < partial < 1.0
    assert score("qa_f1_zh", "北京。", ["北京"]) == 1.0


def test_rouge_l_is_the_whole_text_lcs_best_over_references():
    assert score("rouge_l", "Amanda baked cookies.", ["Amanda baked cookies."]) == pytest.approx(1.0)
    # LCS "amanda baked cookies" of 3 words: precision 3/3, recall 3/5
    assert score("rouge_l", "amanda baked cookies", ["Amanda baked cookies for Jerry."]) == pytest.approx(0.75)
    assert score("rouge_l", "cookies", ["Tom is late.", "Amanda baked cookies"]) == pytest.approx(0.5)
    # ROUGE-L ignores line breaks where ROUGE-Lsum matches line by line: word order across lines still counts
    two_lines = "jerry will come\namanda baked cookies"
    reference = ["amanda baked cookies jerry will come"]
    assert score("rouge_l", two_lines, reference) == pytest.approx(0.5)
    assert score("rouge_lsum", two_lines, reference) > score("rouge_l", two_lines, reference)
    assert score("rouge_l", "zzz", ["Amanda baked cookies"]) == 0.0
    assert score("rouge_l", "anything", []) == 0.0


def test_repoqa_needs_the_closest_function_above_threshold():
    needles = {"add": "def add(a, b):\n    return a + b", "sub": "def sub(a, b):\n    return a - b"}
    meta = {"name": "add", "needles": needles}
    reply = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert score("repoqa", reply, [needles["add"]], meta) == 1.0
    assert score("repoqa", "```python\ndef sub(a, b):\n    return a - b\n```", [needles["add"]], meta) == 0.0
    assert score("repoqa", "def add(x):", [needles["add"]], meta) == 0.0


def test_unknown_metric_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown metric"):
        get_scorer("bleurt")
