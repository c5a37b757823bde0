"""Plain frozen records shared by the catalogue and its callers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.StrEnum):
    """Where a media URL is in the pipeline (SPEC §7). The last four are final."""

    PENDING = "pending"
    DOWNLOADED = "downloaded"
    DECODED = "decoded"
    CLASSIFIED = "classified"
    LIBRARY = "library"
    QUARANTINE = "quarantine"
    HELD = "held"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({State.LIBRARY, State.QUARANTINE, State.HELD, State.REJECTED})


class Placement(enum.StrEnum):
    """Where a stored image is filed."""

    LIBRARY = "library"
    QUARANTINE = "quarantine"
    HELD = "held"


@dataclass(frozen=True)
class MediaRef:
    """One media URL a source yielded, with the post it came from and the source's signals.

    `flags` are the source's own NSFW signals (e.g. ``mastodon:sensitive``,
    ``booru:rating:e``); `tags` are the source's tags/hashtags, lower-cased.
    `dedup_key` identifies the same media across servers (a Mastodon `uri`); it defaults
    to the URL. `md5` is a content hash the source announced before download (boorus).
    """

    url: str
    source: str
    post_url: str | None = None
    author: str | None = None
    flags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    dedup_key: str | None = None
    md5: str | None = None
    posted_at: str | None = None
    skip_reason: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> str:
        return self.dedup_key or self.url


@dataclass(frozen=True)
class MediaRow:
    """A media row as stored in the catalogue."""

    id: int
    url: str
    source: str
    state: State
    reason: str | None
    sha256: str | None
    post_url: str | None
    author: str | None
    flags: tuple[str, ...]
    tags: tuple[str, ...]
    attempts: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class BlobRow:
    """A stored image (one per sha256)."""

    sha256: str
    size: int
    format: str | None
    width: int | None
    height: int | None
    extension: str
    placement: Placement | None
    reason: str | None
    tags: tuple[str, ...]
    model_version: str | None
    created_at: float
    updated_at: float
