"""How a reason prints scores and thresholds so that its comparison reads true.

Ordinary values keep their short form (`nsfw=0.912 >= 0.80`): a threshold shows at least
two decimals and as many more as it has (0.003, 0.0025); a score shows at least three, at
least one more than the thresholds it is compared with when they have more than two, and
more digits still until the printed comparison agrees with the real one
(`nsfw=0.8000001 >= 0.80`, never `0.800 < 0.80` or `0.004 >= 0.00` for 0.0035 and 0.003).
"""

from __future__ import annotations

import functools
from decimal import Decimal

SCORE_DECIMALS = 3
THRESHOLD_DECIMALS = 2
_MAX_FIXED_DECIMALS = 20


@functools.lru_cache(maxsize=256)
def _decimals(value: float) -> int:
    """How many decimals the shortest round-tripping form of `value` has."""
    exponent = Decimal(repr(float(value))).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


@functools.lru_cache(maxsize=256)
def threshold_text(threshold: float) -> str:
    """A threshold with two decimals, or as many as it has (0.80, 0.003, 0.0025)."""
    if _decimals(threshold) <= THRESHOLD_DECIMALS:
        return f"{threshold:.{THRESHOLD_DECIMALS}f}"
    # The shortest round-tripping digits: `%.Nf` may round the binary value otherwise.
    return format(Decimal(repr(float(threshold))), "f")


def _sign(a: Decimal | float, b: Decimal | float) -> int:
    return (a > b) - (a < b)


def score_text(score: float, *thresholds: float) -> str:
    """`score` printed so that comparing it with each printed threshold agrees with the
    real comparison (greater, equal or less)."""
    score = float(score)  # numpy scalars compare as the float they convert to
    if all(_decimals(threshold) <= THRESHOLD_DECIMALS for threshold in thresholds):
        # Fast path: decimals of at most three places differ by 0.001 or more, so their
        # floats order exactly like them (and such a threshold prints as itself).
        text = f"{score:.{SCORE_DECIMALS}f}"
        near = float(text)
        if all((near > threshold) - (near < threshold)
               == (score > threshold) - (score < threshold) for threshold in thresholds):
            return text
    bounds = [(float(threshold), Decimal(threshold_text(threshold)))
              for threshold in thresholds]
    extra = max((_decimals(threshold) for threshold in thresholds), default=0)
    start = max(SCORE_DECIMALS, extra + 1 if extra > THRESHOLD_DECIMALS else 0)
    for decimals in range(start, _MAX_FIXED_DECIMALS + 1):
        text = f"{score:.{decimals}f}"
        shown = Decimal(text)
        if all(_sign(shown, printed) == _sign(score, real) for real, printed in bounds):
            return text
    # The shortest round-tripping form orders like the floats themselves.
    return format(Decimal(repr(float(score))), "f")
