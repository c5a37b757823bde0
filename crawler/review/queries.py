"""What the review pages show: the catalogue's review cards, filtered in Python.

Lists load every image of one placement with its scores, sources and latest human labels
in a few queries (storage/catalogue_review.py), then filter here: tag, score range, source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.catalogue import Catalogue
from storage.catalogue_labels import LabelRecord
from storage.catalogue_review import ReviewItem
from storage.records import MediaRow

# The review pages' names for the catalogue's records.
Item = ReviewItem

PLACEMENTS = ("quarantine", "held", "library")
UNTAGGED = "untagged"


@dataclass(frozen=True)
class Filters:
    """The list filters of SPEC's review pages: tag, score range (of `tag`), source."""

    tag: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    source: str | None = None
    page: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        """Parse `?tag=&min=&max=&source=&page=`; raises ValueError naming the bad one."""

        def score(name: str) -> float | None:
            text = query.get(name, "").strip()
            if not text:
                return None
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a score from 0 to 1, got {text!r}")
            return value

        def text(name: str) -> str | None:
            value = query.get(name, "").strip()
            return value or None

        page_text = query.get("page", "1").strip() or "1"
        if not page_text.isascii() or not page_text.isdigit() or int(page_text) < 1:
            raise ValueError(f"page must be a positive integer, got {page_text!r}")
        return cls(tag=text("tag"), min_score=score("min"), max_score=score("max"),
                   source=text("source"), page=int(page_text))

    def as_query(self, **changes: Any) -> dict[str, str]:
        values = {"tag": self.tag, "min": self.min_score, "max": self.max_score,
                  "source": self.source, "page": self.page if self.page > 1 else None}
        values.update(changes)
        return {key: str(value) for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class ItemDetail:
    """The image page: the card's data, every label ever given, every URL it came from."""

    item: Item
    history: tuple[LabelRecord, ...]
    media: tuple[MediaRow, ...]
    previous: str | None
    next: str | None


def matches(item: Item, filters: Filters, score_tag: str) -> bool:
    """Whether `item` passes the filters; the score range applies to `score_tag`."""
    if item.placement == "library" and filters.tag is not None:
        filed = item.tags or (UNTAGGED,)
        if filters.tag not in filed:
            return False
    if filters.source is not None and filters.source not in item.sources:
        return False
    if filters.min_score is not None or filters.max_score is not None:
        score = item.scores.get(score_tag)
        if score is None:
            return False
        if filters.min_score is not None and score < filters.min_score:
            return False
        if filters.max_score is not None and score > filters.max_score:
            return False
    return True


def is_confirmed(item: Item, quarantine_tags: Sequence[str]) -> bool:
    """Whether a reviewer confirmed the image: a quarantine tag's latest human label is yes.

    The quarantine queue shows the other images (undecided) by default.
    """
    return any(item.labels.get(tag) is True for tag in quarantine_tags)


async def list_items(catalogue: Catalogue, placement: str, filters: Filters,
                     default_score_tag: str) -> list[Item]:
    """Every image filed at `placement` that passes `filters`, newest first."""
    items = await catalogue.review_items(placement)
    score_tag = filters.tag or default_score_tag
    return [item for item in items if matches(item, filters, score_tag)]


async def item_detail(catalogue: Catalogue, sha256: str) -> ItemDetail | None:
    """The image page's data, or None when `sha256` is not a filed image."""
    item = await catalogue.filed_review_item(sha256)
    if item is None:
        return None
    history = tuple(await catalogue.label_history(sha256))
    media = tuple(await catalogue.media_for_blob(sha256))
    order = await catalogue.placement_order(item.placement)
    position = order.index(sha256) if sha256 in order else -1
    previous = order[position - 1] if position > 0 else None
    following = order[position + 1] if 0 <= position < len(order) - 1 else None
    return ItemDetail(item, history, media, previous, following)


async def placement_counts(catalogue: Catalogue) -> dict[str, int]:
    return await catalogue.placement_counts()


async def all_sources(catalogue: Catalogue) -> list[str]:
    return await catalogue.source_names()


async def served_blob(catalogue: Catalogue, sha256: str) -> tuple[str, str | None] | None:
    """(extension, Pillow format) of a filed image, or None (unknown, deleted, unfiled)."""
    blob = await catalogue.filed_blob(sha256)
    return (blob.extension, blob.format) if blob is not None else None
