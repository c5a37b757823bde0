"""Exceptions of the classifier package."""

from __future__ import annotations

from storage.errors import MeganeError


class ClassifierError(MeganeError):
    """Base of classifier failures."""


class DecodeError(ClassifierError):
    """An image could not be decoded or failed validation; costs one item.

    `reason` is a short constant snake_case code (e.g. ``too_many_pixels``) that is stored
    in the catalogue; `detail` is the human explanation.
    """

    def __init__(self, reason: str, detail: str, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.path = path


class ModelError(ClassifierError):
    """A model version could not be found, verified or loaded."""


class InferenceError(ClassifierError):
    """Running the model on a batch failed or timed out; the batch is held (fail closed)."""
