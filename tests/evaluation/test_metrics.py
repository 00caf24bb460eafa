"""Metric edge cases; every expected value is worked out by hand in the comment beside it."""

from __future__ import annotations

import pytest

from ixcdoc.evaluation.metrics import (
    anls,
    anls_similarity,
    levenshtein,
    ocrbench_hit,
    relaxed_accuracy,
    relaxed_match,
    score,
)


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("abc", "", 3),  # three deletions
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("hello", "helo", 1),
    ],
)
def test_levenshtein(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def test_anls_one_edit() -> None:
    # 'hello' vs 'helo': distance 1, longer length 5 -> 1 - 1/5 = 0.8
    assert anls("helo", ["hello"]) == pytest.approx(0.8)


def test_anls_case_and_whitespace_do_not_count() -> None:
    # lower-cased and whitespace-collapsed: "  Hello   World\n" == "hello world" -> 1.0
    assert anls("  Hello   World\n", ["hello world"]) == 1.0


def test_anls_threshold_keeps_exactly_one_half() -> None:
    # The RRC script, lmms-eval and VLMEvalKit zero a similarity only when it is < 0.5.
    # 'abcd' vs 'abxy': distance 2 of 4 -> similarity 0.5, kept
    assert anls_similarity("abxy", "abcd") == 0.5
    assert anls("abxy", ["abcd"]) == 0.5
    # 'abcde' vs 'axyzw': distance 4 of 5 -> 0.2 < 0.5 -> 0
    assert anls_similarity("axyzw", "abcde") == 0.0
    # 'abcde' vs 'abcxy': distance 2 of 5 -> 0.6
    assert anls_similarity("abcxy", "abcde") == pytest.approx(0.6)


def test_anls_divides_by_the_raw_lengths() -> None:
    # The distance is between the normalized strings, the length is the raw strings' (the RRC
    # script's len(s.upper())): 'helo' vs gold '  Hello  ' (9 characters as written):
    # normalized 'helo' vs 'hello', distance 1 -> 1 - 1/9; the normalized lengths would give
    # 1 - 1/5 = 0.8
    assert anls("helo", ["  Hello  "]) == pytest.approx(1 - 1 / 9)
    # the prediction's raw length counts too: '  helo  ' (8) vs 'hello' -> 1 - 1/8
    assert anls("  helo  ", ["hello"]) == pytest.approx(1 - 1 / 8)
    # len('ß'.upper()) is 2 ('SS'): 's' vs gold 'ß', distance 1 of 2 -> 0.5, kept
    assert anls("s", ["ß"]) == 0.5


def test_anls_best_gold_answer_wins() -> None:
    # vs '1,000': distance 1 of 5 -> 0.8; vs '1000': identical -> 1.0; the max is 1.0
    assert anls("1000", ["1,000", "1000"]) == 1.0
    # vs 'ten' -> NL 1 -> 0; vs '10%': '10' is one deletion of 3 -> 1 - 1/3
    assert anls("10", ["ten", "10%"]) == pytest.approx(2 / 3)


def test_anls_empty_prediction_and_no_answers() -> None:
    # empty vs 'abc': distance 3 of 3 -> NL 1 -> 0
    assert anls("", ["abc"]) == 0.0
    assert anls("   ", ["abc"]) == 0.0
    # both empty after normalization: distance 0 -> 1
    assert anls(" ", [""]) == 1.0
    assert anls("", [""]) == 1.0
    # an empty gold answer among others: 'abc' vs '' is distance 3 of 3 -> 0; vs 'abc' -> 1
    assert anls("abc", ["", "abc"]) == 1.0
    assert anls("abc", [""]) == 0.0
    assert anls("abc", []) == 0.0


def test_relaxed_numbers_within_five_percent() -> None:
    # |104 - 100| / 100 = 0.04 <= 0.05 -> right; |106 - 100| / 100 = 0.06 -> wrong
    assert relaxed_accuracy("104", ["100"]) == 1.0
    assert relaxed_accuracy("106", ["100"]) == 0.0
    # exactly 5%: |105 - 100| / 100 = 0.05 -> right (the bound is inclusive)
    assert relaxed_accuracy("105", ["100"]) == 1.0
    # negative gold: |-0.96 - -1| / 1 = 0.04 -> right
    assert relaxed_accuracy("-0.96", ["-1"]) == 1.0


def test_relaxed_percent_signs() -> None:
    # '12%' is 0.12 and '12' is 12: far apart -> wrong
    # '12%' vs '12.4%': |0.12 - 0.124| / 0.124 ~ 3% -> right
    assert relaxed_match("12%", "12") is False
    assert relaxed_match("12%", "12.4%") is True
    assert relaxed_match("0.12", "12%") is True  # 0.12 == 12 / 100
    # pix2struct's rstrip('%'): a label '12%%' is 0.12 too
    assert relaxed_match("0.12", "12%%") is True
    assert relaxed_match("12%", "12%%") is True


def test_relaxed_strips_the_prediction_not_the_label() -> None:
    # VLMEvalKit strips the prediction and passes the label as written:
    # text labels with spaces match only themselves
    assert relaxed_match(" Yes ", "Yes") is True
    assert relaxed_match("Yes", "Yes ") is False
    assert relaxed_match("Yes ", "Yes ") is False  # the prediction lost its space
    # numbers read through float(), which allows surrounding spaces, either way
    assert relaxed_match("42", " 42 ") is True
    # an empty label: no number, so an exact match; only an empty prediction has it
    assert relaxed_accuracy("", [""]) == 1.0
    assert relaxed_accuracy("0", [""]) == 0.0


def test_relaxed_units_need_exact_match() -> None:
    # '12 million' is not a float: string comparison, case-insensitive
    assert relaxed_accuracy("12 Million", ["12 million"]) == 1.0
    assert relaxed_accuracy("12", ["12 million"]) == 0.0
    assert relaxed_accuracy("$12", ["12"]) == 0.0


def test_relaxed_text_case_whitespace_and_zero() -> None:
    assert relaxed_accuracy("  Yes ", ["yes"]) == 1.0
    assert relaxed_accuracy("no", ["yes"]) == 0.0
    # a gold 0 has no relative error: '0.0' vs '0' compares as strings -> wrong, '0' -> right
    assert relaxed_accuracy("0.0", ["0"]) == 0.0
    assert relaxed_accuracy("0", ["0"]) == 1.0
    assert relaxed_accuracy("", ["0"]) == 0.0
    # any of several gold answers
    assert relaxed_accuracy("2019", ["2018", "2019"]) == 1.0


def test_ocrbench_substring_and_case() -> None:
    assert ocrbench_hit("The word is HELLO.", ["hello"]) == 1.0
    assert ocrbench_hit("helo", ["hello"]) == 0.0
    assert ocrbench_hit("", ["hello"]) == 0.0
    assert ocrbench_hit("line one\nline two", ["one line"]) == 1.0  # newline read as a space
    # '' is a substring of every prediction: an empty gold answer is a hit, as in OCRBench_eval
    assert ocrbench_hit("anything", ["nope", ""]) == 1.0


def test_ocrbench_formula_ignores_spaces_keeps_case() -> None:
    hme = "Handwritten Mathematical Expression Recognition"
    assert ocrbench_hit("x^{2}", ["x ^ { 2 }"], hme) == 1.0
    assert ocrbench_hit("X^{2}", ["x ^ { 2 }"], hme) == 0.0
    # outside HME, spaces count: 'x^{2}' does not contain 'x ^ { 2 }'
    assert ocrbench_hit("x^{2}", ["x ^ { 2 }"], "Regular Text Recognition") == 0.0


def test_score_dispatch() -> None:
    assert score("anls", "helo", ["hello"]) == pytest.approx(0.8)
    assert score("relaxed_accuracy", "104", ["100"]) == 1.0
    assert score("ocrbench", "HELLO", ["hello"]) == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        score("bleu", "a", ["a"])
