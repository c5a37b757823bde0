"""What the review pages show, read from the catalogue in a few queries per page.

Lists load every image of one placement with its scores, sources and latest human labels
in four queries (no query per image), then filter in Python: tag, score range, source.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.catalogue import Catalogue
from storage.records import MediaRow

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
class Item:
    """One stored image as a review card shows it."""

    sha256: str
    placement: str
    reason: str | None
    format: str | None
    width: int | None
    height: int | None
    tags: tuple[str, ...]
    model_version: str | None
    updated_at: float
    scores: Mapping[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    labels: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelRecord:
    tag: str
    value: bool
    origin: str
    who: str | None
    created_at: float


@dataclass(frozen=True)
class ItemDetail:
    """The image page: the card's data, every label ever given, every URL it came from."""

    item: Item
    history: tuple[LabelRecord, ...]
    media: tuple[MediaRow, ...]
    previous: str | None
    next: str | None


async def _items(catalogue: Catalogue, where: str, params: Sequence[Any]) -> list[Item]:
    blobs = await catalogue.fetch_all(
        f"SELECT * FROM blobs b WHERE {where} ORDER BY b.created_at DESC, b.sha256", params)
    scores: dict[str, dict[str, float]] = {}
    for row in await catalogue.fetch_all(
        f"""SELECT s.sha256, s.tag, s.score FROM scores s JOIN blobs b
            ON b.sha256 = s.sha256 AND b.model_version = s.model_version WHERE {where}""",
        params,
    ):
        scores.setdefault(row["sha256"], {})[row["tag"]] = row["score"]
    sources: dict[str, set[str]] = {}
    for row in await catalogue.fetch_all(
        f"""SELECT DISTINCT m.sha256, m.source FROM media m JOIN blobs b
            ON b.sha256 = m.sha256 WHERE {where}""",
        params,
    ):
        sources.setdefault(row["sha256"], set()).add(row["source"])
    labels: dict[str, dict[str, bool]] = {}
    for row in await catalogue.fetch_all(
        f"""SELECT l.sha256, l.tag, l.value FROM labels l JOIN blobs b
            ON b.sha256 = l.sha256 WHERE l.origin = 'human' AND {where} ORDER BY l.id""",
        params,
    ):
        labels.setdefault(row["sha256"], {})[row["tag"]] = bool(row["value"])
    return [
        Item(
            sha256=row["sha256"], placement=row["placement"], reason=row["reason"],
            format=row["format"], width=row["width"], height=row["height"],
            tags=tuple(json.loads(row["tags"] or "[]")), model_version=row["model_version"],
            updated_at=row["updated_at"], scores=scores.get(row["sha256"], {}),
            sources=tuple(sorted(sources.get(row["sha256"], ()))),
            labels=labels.get(row["sha256"], {}),
        )
        for row in blobs
    ]


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
    items = await _items(catalogue, "b.placement = ?", (placement,))
    score_tag = filters.tag or default_score_tag
    return [item for item in items if matches(item, filters, score_tag)]


async def item_detail(catalogue: Catalogue, sha256: str) -> ItemDetail | None:
    """The image page's data, or None when `sha256` is not a filed image."""
    found = await _items(catalogue, "b.sha256 = ? AND b.placement IN "
                                    "('library', 'quarantine', 'held')", (sha256,))
    if not found:
        return None
    item = found[0]
    history = tuple(
        LabelRecord(row["tag"], bool(row["value"]), row["origin"], row["who"], row["created_at"])
        for row in await catalogue.fetch_all(
            "SELECT * FROM labels WHERE sha256 = ? ORDER BY id", (sha256,))
    )
    media = tuple(await catalogue.media_for_blob(sha256))
    order = [row["sha256"] for row in await catalogue.fetch_all(
        "SELECT sha256 FROM blobs WHERE placement = ? ORDER BY created_at DESC, sha256",
        (item.placement,))]
    position = order.index(sha256) if sha256 in order else -1
    previous = order[position - 1] if position > 0 else None
    following = order[position + 1] if 0 <= position < len(order) - 1 else None
    return ItemDetail(item, history, media, previous, following)


async def placement_counts(catalogue: Catalogue) -> dict[str, int]:
    rows = await catalogue.fetch_all(
        "SELECT placement, count(*) AS n FROM blobs WHERE placement IS NOT NULL "
        "GROUP BY placement")
    return {row["placement"]: row["n"] for row in rows}


async def all_sources(catalogue: Catalogue) -> list[str]:
    rows = await catalogue.fetch_all("SELECT DISTINCT source FROM media ORDER BY source")
    return [row["source"] for row in rows]


async def served_blob(catalogue: Catalogue, sha256: str) -> tuple[str, str | None] | None:
    """(extension, Pillow format) of a filed image, or None (unknown, deleted, unfiled)."""
    row = await catalogue.fetch_one(
        "SELECT extension, format FROM blobs WHERE sha256 = ? "
        "AND placement IN ('library', 'quarantine', 'held')", (sha256,))
    return (row["extension"], row["format"]) if row is not None else None
