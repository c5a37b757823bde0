"""The pictures of one feed item: URLs resolved, non-pictures dropped, one URL per picture.

`ItemPictures` collects an item's candidate images (from enclosures, Media RSS, HTML) with
what they declare about their size; `best()` keeps the largest rendition of each picture
(renditions share a `picture_identity`) in first-seen order. Everything dropped is kept with
its reason for the poll's log line. Nothing here raises on odd input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from crawler.sources.html_images import not_a_picture, picture_identity

_TRIMMED = re.compile(r"^[\s\x00-\x20]+|[\s\x00-\x20]+$")


@dataclass(frozen=True)
class Dropped:
    """An image of an item that is not yielded, and why (`feedflare`, `lazy_placeholder`...)."""

    url: str
    why: str


def clean_text(text: str) -> str:
    """`text` storable as UTF-8: lone surrogates (from odd character references) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def resolve_url(raw: str, bases: Iterable[str | None]) -> str:
    """`raw` made absolute against the first base that can resolve it; never raises.

    A URL that no base can resolve (an unparsable host such as ``img.example.jp：8080``) comes
    back as written (stripped), so that the pipeline records it as rejected `bad_url`.
    """
    # What URL parsers trim: C0 controls and spaces, and (in HTML attributes) whitespace.
    text = _TRIMMED.sub("", raw)
    if not text:
        return ""
    for base in bases:
        if not base:
            continue
        try:
            joined = urljoin(base, text)
        except ValueError:
            continue
        if joined:  # urljoin(";", ";") is "": a reference never resolves to nothing
            return joined
    return text


def number(value: Any) -> int:
    """A declared integer (width, height, fileSize), 0 when missing or not a number."""
    text = str(value or "").strip()
    return int(text) if text.isdigit() and len(text) <= 12 else 0


@dataclass(frozen=True)
class _Picture:
    """A candidate picture of an item: its resolved URL and what it declares about its size."""

    url: str
    area: int = 0
    file_size: int = 0
    is_default: bool = False
    explicit: bool = True


class ItemPictures:
    """The pictures of one item: non-pictures dropped, one URL per picture (the largest)."""

    def __init__(self, thumbnails: frozenset[str] = frozenset()) -> None:
        self.pictures: list[_Picture] = []
        self.dropped: list[Dropped] = []
        # The item's declared thumbnails: an inline <img> of one of them, beside the
        # media:content it is the thumbnail of, is not another picture.
        self.thumbnails = thumbnails

    def add(self, raw: Any, bases: list[str | None], *, width: int | None = None,
            height: int | None = None, file_size: int = 0, is_default: bool = False,
            explicit: bool = True, **where: Any) -> None:
        """Add the image written `raw`, resolved against `bases`, unless it is no picture.

        `explicit` is False for images found in HTML (less trusted than Media RSS and
        enclosures); `where` is the HTML context `not_a_picture` reads (classes, link,
        containers).
        """
        if not isinstance(raw, str) or not raw.strip():
            return
        url = resolve_url(raw, bases)
        if not url:
            return
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            self.dropped.append(Dropped(clean_text(url), "unencodable"))
            return
        why = not_a_picture(url, width=width, height=height, **where)
        explicit_urls = {picture.url for picture in self.pictures if picture.explicit}
        if not why and not explicit and url in self.thumbnails and explicit_urls \
                and url not in explicit_urls:
            why = "thumbnail"
        if why:
            self.dropped.append(Dropped(url, why))
            return
        area = (width or 0) * (height or 0) if width and height else (width or 0) ** 2
        self.pictures.append(_Picture(url, area, file_size, is_default, explicit))

    def best(self) -> list[str]:
        """One URL per picture, in first-seen order: the largest rendition of each."""
        groups: dict[str, list[_Picture]] = {}
        for picture in self.pictures:
            groups.setdefault(picture_identity(picture.url), []).append(picture)
        urls: list[str] = []
        for identity, renditions in groups.items():
            best = max(renditions, key=lambda item: (item.url == identity, item.area,
                                                     item.file_size, item.is_default,
                                                     item.explicit))
            urls.append(best.url)
            smaller = dict.fromkeys(item.url for item in renditions if item.url != best.url)
            self.dropped.extend(Dropped(url, "smaller_rendition") for url in smaller)
        return list(dict.fromkeys(urls))
