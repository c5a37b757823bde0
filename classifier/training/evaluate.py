"""Held-out evaluation: a stratified seeded split, per-tag metrics, suggested thresholds.

Scores count as positive at or over a threshold, as in `crawler.decide`. Average precision
is the step-wise area under the precision-recall curve (sklearn's definition). The held-out
labels are halved into a validation and a test split (`split_metrics`): the suggested threshold
is chosen on validation and every reported figure is measured on test. The suggested
threshold of a head tag gives the most held-out recall at a precision of at least
`target_precision` (the highest such threshold); for `nsfw`, where a miss is what
costs, it is the highest one that keeps recall at or over `nsfw_min_recall`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]


def stratified_split(
    labels: Mapping[str, bool], fraction: float, seed: int, salt: str = ""
) -> tuple[list[str], list[str]]:
    """(train, held out): `fraction` of the positives and of the negatives, chosen by `seed`.

    Each class keeps at least one example on each side when it has two or more. The choice
    depends only on the seed, the salt (the tag) and the set of images, not on their order.
    """
    generator = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    train: list[str] = []
    holdout: list[str] = []
    for value in (True, False):
        members = sorted(sha for sha, label in labels.items() if label is value)
        order = [members[index] for index in generator.permutation(len(members))]
        count = 0
        if len(members) >= 2:
            count = min(max(1, round(fraction * len(members))), len(members) - 1)
        holdout.extend(order[:count])
        train.extend(order[count:])
    return sorted(train), sorted(holdout)


def _curve(truth: Sequence[bool], scores: Scores) -> tuple[Scores, Scores, Scores]:
    """(thresholds descending, precision, recall) at each distinct score."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    sorted_truth = np.asarray(truth, dtype=np.float64)[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_truth.size - 1]
    true_positives = np.cumsum(sorted_truth)[last_of_run]
    false_positives = last_of_run + 1 - true_positives
    precision = true_positives / (true_positives + false_positives)
    total = true_positives[-1] if true_positives.size else 0.0
    recall = true_positives / total if total else np.zeros_like(true_positives)
    return sorted_scores[last_of_run], precision, recall


def average_precision(truth: Sequence[bool], scores: Scores) -> float | None:
    """Area under the step-wise precision-recall curve; None without positives."""
    if not any(truth):
        return None
    _, precision, recall = _curve(truth, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _margin(thresholds: Scores, index: int) -> float:
    """Halfway down to the next lower score: the same decisions on these examples, with
    room on both sides for unseen ones."""
    if index + 1 < thresholds.size:
        return float((thresholds[index] + thresholds[index + 1]) / 2)
    return float(thresholds[index])


def threshold_for_precision(truth: Sequence[bool], scores: Scores, target: float) -> float | None:
    """The threshold with the most recall at a precision of at least `target` (the highest
    such one); None if no threshold reaches the target.

    Placed halfway between the lowest score it keeps and the next one below it.
    """
    if not any(truth):
        return None
    thresholds, precision, recall = _curve(truth, scores)
    reaching = np.flatnonzero(precision >= target)
    if not reaching.size:
        return None
    best = recall[reaching].max()
    return _margin(thresholds, int(reaching[np.flatnonzero(recall[reaching] >= best)[0]]))


def threshold_for_recall(truth: Sequence[bool], scores: Scores, minimum: float) -> float | None:
    """The highest threshold whose recall is at least `minimum`; None without positives.

    Placed halfway between the lowest score it keeps and the next one below it.
    """
    if not any(truth):
        return None
    thresholds, _, recall = _curve(truth, scores)
    reaching = np.flatnonzero(recall >= minimum - 1e-12)
    return _margin(thresholds, int(reaching[0]))


def confusion(truth: Sequence[bool], scores: Scores, threshold: float) -> dict[str, int]:
    predicted = np.asarray(scores) >= threshold
    actual = np.asarray(truth, dtype=bool)
    return {
        "true_positives": int(np.sum(predicted & actual)),
        "false_positives": int(np.sum(predicted & ~actual)),
        "true_negatives": int(np.sum(~predicted & ~actual)),
        "false_negatives": int(np.sum(~predicted & actual)),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def tag_metrics(
    truth: Sequence[bool],
    scores: Scores,
    threshold: float,
    *,
    target_precision: float | None = None,
    min_recall: float | None = None,
) -> dict[str, Any]:
    """Precision, recall, AP and the confusion at `threshold`, and a suggested threshold.

    Give `target_precision` (head tags) or `min_recall` (nsfw) for the suggestion.
    """
    scores = np.asarray(scores, dtype=np.float64)
    matrix = confusion(truth, scores, threshold)
    tp, fp, fn = (matrix["true_positives"], matrix["false_positives"],
                  matrix["false_negatives"])
    result: dict[str, Any] = {
        "threshold": threshold,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "average_precision": _round(average_precision(truth, scores)),
        "confusion": matrix,
        "evaluated": {"positives": int(sum(truth)), "negatives": len(truth) - int(sum(truth))},
    }
    if min_recall is not None:
        suggested = threshold_for_recall(truth, scores, min_recall)
        result["suggested_threshold"] = _round(suggested)
        result["suggested_for"] = f"recall >= {min_recall}"
    elif target_precision is not None:
        suggested = threshold_for_precision(truth, scores, target_precision)
        result["suggested_threshold"] = _round(suggested)
        result["suggested_for"] = f"precision >= {target_precision}"
    else:
        suggested = None
    if suggested is not None:
        at = confusion(truth, scores, suggested)
        result["at_suggested"] = {
            "precision": _ratio(at["true_positives"], at["true_positives"] + at["false_positives"]),
            "recall": _ratio(at["true_positives"], at["true_positives"] + at["false_negatives"]),
        }
    return result


MIN_SPLIT_CLASS = 10  # fewer positives or negatives than this in a split: a noisy figure


def validation_test_split(
    labels: Mapping[str, bool], seed: int, salt: str = ""
) -> tuple[list[str], list[str]]:
    """(validation, test): the held-out labels halved, stratified and seeded like
    `stratified_split`. The threshold is chosen on the first and reported on the second."""
    return stratified_split(labels, 0.5, seed, f"{salt}/test")


def split_warnings(name: str, truth: Sequence[bool]) -> list[str]:
    """Warnings for a split with fewer than MIN_SPLIT_CLASS positives or negatives."""
    positives = int(sum(truth))
    negatives = len(truth) - positives
    return [f"the {name} split holds only {count} {kind} (fewer than {MIN_SPLIT_CLASS}): "
            "its figures are noisy; label more images" for count, kind in
            ((positives, "positives"), (negatives, "negatives")) if count < MIN_SPLIT_CLASS]


def split_metrics(
    validation: tuple[Sequence[bool], Scores],
    test: tuple[Sequence[bool], Scores],
    threshold: float,
    *,
    target_precision: float | None = None,
    min_recall: float | None = None,
) -> dict[str, Any]:
    """`tag_metrics` with the suggested threshold chosen on `validation` and every figure
    (at the configured and at the suggested threshold) measured on `test`, so the report
    never grades a threshold on the examples that picked it."""
    validation_truth, validation_scores = validation
    test_truth, test_scores = test
    result = tag_metrics(test_truth, test_scores, threshold)
    validation_scores = np.asarray(validation_scores, dtype=np.float64)
    suggested: float | None = None
    if min_recall is not None:
        suggested = threshold_for_recall(validation_truth, validation_scores, min_recall)
        result["suggested_for"] = f"recall >= {min_recall}"
    elif target_precision is not None:
        suggested = threshold_for_precision(validation_truth, validation_scores,
                                            target_precision)
        result["suggested_for"] = f"precision >= {target_precision}"
    result["suggested_threshold"] = _round(suggested)
    if suggested is not None:
        at = confusion(test_truth, np.asarray(test_scores), suggested)
        result["at_suggested"] = {
            "precision": _ratio(at["true_positives"], at["true_positives"] + at["false_positives"]),
            "recall": _ratio(at["true_positives"], at["true_positives"] + at["false_negatives"]),
            "measured_on": "test",
        }
    counts = {}
    for name, truth in (("validation", validation_truth), ("test", test_truth)):
        positives = int(sum(truth))
        counts[name] = {"positives": positives, "negatives": len(truth) - positives}
    result["splits"] = counts
    result["warnings"] = (split_warnings("validation", validation_truth)
                          + split_warnings("test", test_truth))
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def print_report(
    metrics: Mapping[str, Mapping[str, Any]], *, title: str, console: Any = None,
) -> None:
    """The per-tag table of a training report (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    criteria = sorted({str(row["suggested_for"]) for row in metrics.values()
                       if row.get("suggested_for")})
    table = Table(title=title, caption="test split pos/neg; precision, recall, TP/FP/TN/FN at the "
                  "configured threshold (thr); suggested threshold: " + "; ".join(criteria))
    for name in ("tag", "pos/neg", "AP", "thr", "prec", "recall", "TP/FP/TN/FN", "suggest"):
        table.add_column(name, justify="left" if name == "tag" else "right",
                         no_wrap=True)

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for tag, row in metrics.items():
        evaluated = row.get("evaluated", {})
        matrix = row.get("confusion", {})
        suggested = row.get("suggested_threshold")
        table.add_row(
            tag,
            f"{evaluated.get('positives', 0)}/{evaluated.get('negatives', 0)}",
            number(row.get("average_precision")),
            number(row.get("threshold")),
            number(row.get("precision")),
            number(row.get("recall")),
            "/".join(str(matrix.get(key, 0)) for key in
                     ("true_positives", "false_positives", "true_negatives", "false_negatives")),
            number(suggested),
        )
    console.print(table)
    for tag, row in metrics.items():
        for warning in row.get("warnings") or ():
            console.print(f"warning: {tag}: {warning}")
