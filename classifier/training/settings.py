"""The `[training]` settings: a frozen dataclass validated once from the config mapping."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from classifier.training.errors import TrainingError

BALANCES = ("hard_negatives", "class_weights")


@dataclass(frozen=True)
class TrainingSettings:
    """How `megane train` builds and judges a model (config.toml `[training]`)."""

    min_positives: int = 20
    min_negatives: int = 20
    use_source_labels: bool = True
    source_label_weight: float = 0.5
    balance: str = "hard_negatives"
    negative_ratio: float = 3.0
    epochs: int = 60
    mining_rounds: int = 3
    batch_size: int = 64
    learning_rate: float = 0.01
    l2: float = 1e-4
    holdout_fraction: float = 0.2
    target_precision: float = 0.9
    nsfw_min_recall: float = 0.99
    seed: int = 2017
    feature_batch_size: int = 16

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> TrainingSettings:
        """Validate `[training]`; TrainingError lists every bad or unknown key."""
        known = {item.name: item for item in fields(cls)}
        problems = [f"training.{key}: unknown key" for key in table if key not in known]
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                continue
            default = known[key].default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = (isinstance(value, int | float) and not isinstance(value, bool)
                      and math.isfinite(value))
            else:
                ok = isinstance(value, str)
            if not ok:
                problems.append(f"training.{key}: expected {type(default).__name__}, "
                                f"got {value!r}")
                continue
            values[key] = float(value) if isinstance(default, float) else value
        settings = cls(**values)
        problems += settings.problems()
        if problems:
            raise TrainingError("bad [training] settings: " + "; ".join(problems))
        return settings

    def problems(self) -> list[str]:
        checks = [
            (self.min_positives >= 1, "training.min_positives: must be at least 1"),
            (self.min_negatives >= 1, "training.min_negatives: must be at least 1"),
            (0 < self.source_label_weight <= 1, "training.source_label_weight: in (0, 1]"),
            (self.balance in BALANCES, f"training.balance: one of {BALANCES}"),
            (self.negative_ratio > 0, "training.negative_ratio: must be positive"),
            (self.epochs >= 1, "training.epochs: must be at least 1"),
            (self.mining_rounds >= 1, "training.mining_rounds: must be at least 1"),
            (self.batch_size >= 1, "training.batch_size: must be at least 1"),
            (self.learning_rate > 0, "training.learning_rate: must be positive"),
            (self.l2 >= 0, "training.l2: must not be negative"),
            (0 < self.holdout_fraction < 1, "training.holdout_fraction: between 0 and 1"),
            (0 < self.target_precision <= 1, "training.target_precision: in (0, 1]"),
            (0 < self.nsfw_min_recall <= 1, "training.nsfw_min_recall: in (0, 1]"),
            (self.feature_batch_size >= 1, "training.feature_batch_size: at least 1"),
        ]
        return [message for ok, message in checks if not ok]
