"""Reasons print scores and thresholds so the comparison they state is true (Hypothesis).

Every reason `decide` writes is parsed back: the printed score compared with the printed
threshold (or review band) must agree with the real comparison that decided.
"""

from __future__ import annotations

import re
from decimal import Decimal
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.decide import Policy, decide
from crawler.reasontext import score_text, threshold_text
from storage.records import Placement

UNIT = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
# Thresholds as people write them (0.8, 0.003, 0.0025) and arbitrary floats too.
WRITTEN = st.decimals(min_value=0, max_value=1, places=4).map(float)
THRESHOLD = st.one_of(WRITTEN, UNIT)
NUMBER = r"(\d+\.\d+)"


def parsed(pattern: str, text: str) -> list[Decimal]:
    """The numbers a reason prints, as exact decimals (fails when the text differs)."""
    match = re.fullmatch(pattern, text)
    assert match is not None, text
    return [Decimal(group) for group in match.groups()]


def nsfw_policy(threshold: float, band: tuple[float, float] | None = None) -> Policy:
    """Only the nsfw quarantine tag, with `threshold` and an optional review band."""
    return Policy(thresholds=MappingProxyType({"nsfw": threshold}), review_band=band)


@settings(max_examples=500, deadline=None)
@given(score=UNIT, threshold=THRESHOLD)
def test_score_and_clean_reasons_read_true(score: float, threshold: float) -> None:
    """`score: s >= t` is printed only when s >= t, `clean: s < t` only when s < t."""
    reason = decide({"nsfw": score}, (), nsfw_policy(threshold)).reason
    if score >= threshold:
        shown, limit = parsed(rf"score: nsfw={NUMBER} >= {NUMBER}", reason)
        assert shown >= limit
    else:
        shown, limit = parsed(rf"clean: nsfw={NUMBER} < {NUMBER}", reason)
        assert shown < limit
    assert float(limit) == threshold


@settings(max_examples=500, deadline=None)
@given(score=UNIT, low=THRESHOLD, high=THRESHOLD)
def test_review_band_reasons_read_true(score: float, low: float, high: float) -> None:
    """`uncertain: s in review band [low, high)` is printed with low <= s < high readable."""
    low, high = min(low, high), max(low, high)
    decision = decide({"nsfw": score}, (), nsfw_policy(1.0, (low, high)))
    if low <= score < high:
        shown, start, end = parsed(
            rf"uncertain: nsfw={NUMBER} in review band \[{NUMBER}, {NUMBER}\)", decision.reason)
        assert start <= shown < end
        assert (float(start), float(end)) == (low, high)
    else:
        assert decision.placement is (Placement.QUARANTINE if score >= 1.0 else Placement.LIBRARY)


@settings(max_examples=500, deadline=None)
@given(score=UNIT, threshold=THRESHOLD)
def test_printed_comparison_agrees_exactly(score: float, threshold: float) -> None:
    """Printed score against printed threshold: greater, equal or less exactly as the floats."""
    shown, limit = Decimal(score_text(score, threshold)), Decimal(threshold_text(threshold))
    assert (shown > limit) == (score > threshold)
    assert (shown == limit) == (score == threshold)


@pytest.mark.parametrize(
    ("scores", "threshold", "band", "reason"),
    [
        ({"nsfw": 0.912}, 0.8, None, "score: nsfw=0.912 >= 0.80"),
        ({"nsfw": 0.512}, 0.8, (0.4, 0.8), "uncertain: nsfw=0.512 in review band [0.40, 0.80)"),
        ({"nsfw": 0.01}, 0.8, None, "clean: nsfw=0.010 < 0.80"),
        ({"nsfw": 0.0035}, 0.003, None, "score: nsfw=0.0035 >= 0.003"),
        ({"nsfw": 0.003}, 0.0025, None, "score: nsfw=0.00300 >= 0.0025"),
        ({"nsfw": 0.0}, 0.02, (0.0, 0.001), "uncertain: nsfw=0.0000 in review band [0.00, 0.001)"),
        ({"nsfw": 0.8000001}, 0.8, None, "score: nsfw=0.8000001 >= 0.80"),
        ({"nsfw": 0.7999999}, 0.8, None, "clean: nsfw=0.7999999 < 0.80"),
    ],
)
def test_reason_text(scores: dict[str, float], threshold: float,
                     band: tuple[float, float] | None, reason: str) -> None:
    """Ordinary values keep today's text; small or close ones print the digits that decide."""
    assert decide(scores, (), nsfw_policy(threshold, band)).reason == reason
