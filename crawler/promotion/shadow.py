"""Shadow runs: a candidate's heads applied beside the active model on the same batches.

The places where their decisions differ are counted per tag, with a few examples, for the
report written to `models/<version>/shadow.json` before the switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from classifier.base import ClassifyResult
from crawler.decide import Policy, decide
from crawler.promotion.backfill import NSFW_TAG

if TYPE_CHECKING:
    from classifier.models import Heads

SHADOW_EXAMPLES = 50


@dataclass
class ShadowRun:
    """Collects where a candidate's decisions differ from the active model's, N images long."""

    candidate: str
    active: str
    heads: Heads
    policy: Policy
    limit: int
    started_at: float
    seen: int = 0
    disagreements: int = 0
    placement_changes: int = 0
    per_tag: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def listen(self, tensors: npt.NDArray[np.float32], result: ClassifyResult,
                     sha256s: list[str]) -> None:
        """A pipeline batch listener: score the batch's features with the candidate."""
        if self.done.is_set():
            return
        take = min(len(sha256s), self.limit - self.seen)
        candidate_scores = self.heads.scores(np.asarray(result.features[:take], np.float32))
        for index in range(take):
            active_scores = dict(result.scores[index])
            candidate = {NSFW_TAG: active_scores.get(NSFW_TAG, 0.0)}
            candidate.update({tag: float(candidate_scores[index, column])
                              for column, tag in enumerate(self.heads.tags)})
            self._compare(sha256s[index], active_scores, candidate)
        self.seen += take
        if self.seen >= self.limit:
            self.done.set()

    def _compare(self, sha256: str, active: Mapping[str, float],
                 candidate: Mapping[str, float]) -> None:
        for tag in sorted(set(active) | set(candidate)):
            stats = self.per_tag.setdefault(tag, {
                "compared": 0, "mean_abs_difference": 0.0, "max_abs_difference": 0.0,
                "newly_over_threshold": 0, "newly_under_threshold": 0})
            threshold = self.policy.threshold(tag)
            old, new = active.get(tag), candidate.get(tag)
            if old is not None and new is not None:
                difference = abs(new - old)
                stats["compared"] += 1
                stats["mean_abs_difference"] += difference
                stats["max_abs_difference"] = max(stats["max_abs_difference"], difference)
            was_over = old is not None and old >= threshold
            is_over = new is not None and new >= threshold
            stats["newly_over_threshold"] += int(is_over and not was_over)
            stats["newly_under_threshold"] += int(was_over and not is_over)
        before = decide(active, (), self.policy)
        after = decide(candidate, (), self.policy)
        if (before.placement, before.tags) != (after.placement, after.tags):
            self.disagreements += 1
            self.placement_changes += int(before.placement != after.placement)
            if len(self.examples) < SHADOW_EXAMPLES:
                self.examples.append({
                    "sha256": sha256,
                    "active": {"placement": before.placement.value, "tags": list(before.tags),
                               "scores": {k: round(v, 6) for k, v in active.items()}},
                    "candidate": {"placement": after.placement.value, "tags": list(after.tags),
                                  "scores": {k: round(v, 6) for k, v in candidate.items()}},
                })

    def report(self, finished_at: float) -> dict[str, Any]:
        per_tag = {}
        for tag, stats in self.per_tag.items():
            compared = int(stats["compared"])
            per_tag[tag] = {
                "compared": compared,
                "mean_abs_difference": round(stats["mean_abs_difference"] / compared, 6)
                if compared else None,
                "max_abs_difference": round(stats["max_abs_difference"], 6),
                "newly_over_threshold": int(stats["newly_over_threshold"]),
                "newly_under_threshold": int(stats["newly_under_threshold"]),
            }
        return {
            "candidate": self.candidate, "active": self.active, "images": self.seen,
            "disagreements": self.disagreements, "placement_changes": self.placement_changes,
            "per_tag": per_tag, "examples": self.examples,
            "thresholds": dict(self.policy.thresholds),
            "started_at": self.started_at, "finished_at": finished_at,
        }

