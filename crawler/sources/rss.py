"""RSS 2.0, Atom and Media RSS feeds, fetched with a conditional GET and parsed by feedparser.

We fetch the bytes ourselves (capped, through the SSRF guard) and hand them to feedparser as
a file object, so feedparser never fetches anything. Entity declarations are refused before
parsing: feedparser keeps "safe" internal entities, and even those allow a quadratic blow-up.

Keys: `url` (the feed). The cursor holds the validators of the last 200 response
(`{"etag": ..., "last_modified": ...}`); a 304 yields nothing and keeps the cursor.

Which pictures an item yields (one URL per picture, the largest rendition): image
enclosures, image `media:content` (the largest of each `media:group`), and the `<img>` of
its HTML read as a lazy loader would (crawler/sources/html_images.py); when none, its largest
`media:thumbnail`; when none, its own `itunes:image`. Share buttons, feed-flare, tracking
pixels, avatars and icons are dropped and logged (`feed_images_dropped`). URLs of any scheme
are yielded (the pipeline rejects what it cannot fetch); an unparsable URL is yielded as
written (rejected `bad_url` downstream). One failing entry is logged (`feed_entry_failed`)
and costs that entry only.
"""

from __future__ import annotations

import asyncio
import calendar
import io
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import feedparser
import structlog

from crawler.errors import SourceError
from crawler.sources.base import HttpClient, PollResult, Source, SourceContext
from crawler.sources.common import (
    document_cap,
    dump_cursor,
    header,
    is_http_url,
    iso_from_epoch,
    load_cursor,
    lower_unique,
    raise_for_status,
)
from crawler.sources.html_images import html_images
from crawler.sources.xmlsafe import declares_entities
from crawler.sources.item_pictures import (
    Dropped,
    ItemPictures,
    clean_text,
    number,
    resolve_url,
)
from crawler.sources.media_groups import smaller_renditions as smaller_renditions
from storage.records import MediaRef

if TYPE_CHECKING:
    from crawler.config import SourceConfig

log = structlog.get_logger()

KIND = "rss"
KEYS = frozenset({"url"})
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".bmp")
ACCEPT = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, "
          "text/xml;q=0.8, */*;q=0.1")
# Media RSS ratings that mean "adult" (urn:simple is the default scheme).
ADULT_RATINGS = frozenset({"adult", "nc-17", "x", "xxx", "tv-ma", "r18", "r-18"})
# Category schemes whose text is a space-separated list of tags (Flickr's media:category).
SPACE_SEPARATED_TAG_SCHEMES = frozenset({"urn:flickr:tags"})
# How many dropped images one poll's log line lists (the counts cover them all).
MAX_LOGGED_DROPS = 50
# Problems feedparser reports for perfectly readable feeds served with a vague content type.
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


@dataclass(frozen=True)
class FeedResult:
    """What a feed body gave: the media, why the feed was malformed (if it was), what was
    left out (`dropped`) and the entries that failed, as (entry, reason)."""

    refs: list[MediaRef]
    problem: str | None = None
    dropped: tuple[Dropped, ...] = ()
    failed_entries: tuple[tuple[str, str], ...] = ()


def parse_feed(body: bytes, *, source: str, base_url: str,
               content_type: str | None = None) -> list[MediaRef]:
    """The media of a feed body; raise SourceError when it is not a feed at all.

    SourceError is the only exception: one bad URL costs that URL, one bad entry that entry.
    """
    return read_feed(body, source=source, base_url=base_url, content_type=content_type).refs


def read_feed(body: bytes, *, source: str, base_url: str,
              content_type: str | None = None) -> FeedResult:
    """Parse a feed body into media refs, reporting (not raising for) a malformed feed.

    `base_url` is where the feed was fetched from. A relative URL resolves against the
    xml:base in force where it sits (per content element for HTML), else the entry's link,
    else `base_url`. Raises SourceError only; an entry that fails is reported, not raised.
    """
    if declares_entities(body):
        raise SourceError(source, f"feed at {base_url} declares XML entities; refused")
    response_headers = {"content-location": base_url,
                        "content-type": content_type or "application/xml"}
    try:
        # No warnings.catch_warnings() here: it swaps the process-wide filter list and is
        # not thread-safe (parses run in worker threads). feedparser's deprecation warnings
        # come from its key aliases, which this module never reads (plain dict.get).
        # HTML is neither resolved nor sanitised by feedparser: we only read its <img>
        # tags (sanitising would drop data-src), and resolve them ourselves.
        parsed = feedparser.parse(io.BytesIO(body), response_headers=response_headers,
                                  resolve_relative_uris=False, sanitize_html=False)
    except Exception as error:  # noqa: BLE001 - feedparser failing on a body costs this poll
        raise SourceError(source, f"{base_url} could not be parsed as a feed: "
                                  f"{type(error).__name__}: {error}") from None
    entries = list(parsed.get("entries") or [])
    if not parsed.get("version") and not entries:
        cause = parsed.get("bozo_exception")
        detail = f": {cause}" if cause else ""
        raise SourceError(source, f"{base_url} is not an RSS or Atom feed{detail}")
    problem = None
    if parsed.get("bozo") and not isinstance(parsed.get("bozo_exception"), _BENIGN_BOZO):
        problem = str(parsed.get("bozo_exception") or "malformed feed")
    channel = parsed.get("feed")
    channel_adult = _is_adult(channel.get("media_rating")) if isinstance(channel, Mapping) \
        else None
    superseded = smaller_renditions(body) if b":group" in body else set()
    refs: list[MediaRef] = []
    dropped: list[Dropped] = []
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        try:
            entry_refs, entry_dropped = _entry_refs(
                entry, source=source, base_url=base_url, channel_adult=channel_adult,
                superseded=superseded)
        except Exception as error:  # noqa: BLE001 - isolation: an entry costs that entry
            failed.append((_entry_name(entry, index), f"{type(error).__name__}: {error}"))
            continue
        dropped.extend(entry_dropped)
        for ref in entry_refs:
            if ref.url not in seen:
                seen.add(ref.url)
                refs.append(ref)
    return FeedResult(refs=refs, problem=problem, dropped=tuple(dropped),
                      failed_entries=tuple(failed))


def _entry_name(entry: object, index: int) -> str:
    """How a log names an entry: its id or link, else its position."""
    if isinstance(entry, Mapping):
        for key in ("id", "link"):
            value = entry.get(key)
            if isinstance(value, str) and value:
                return clean_text(value)[:300]
    return f"entry #{index + 1}"


def _is_adult(rating: Any) -> bool | None:
    """True/False for a Media RSS rating, None when there is none."""
    if not isinstance(rating, Mapping):
        return None
    content = str(rating.get("content") or "").strip().lower()
    if not content:
        return None
    return content in ADULT_RATINGS


def _xml_base(detail: Any, base_url: str) -> str | None:
    """The xml:base feedparser reports for an element, when the feed declared one."""
    if not isinstance(detail, Mapping):
        return None
    base = detail.get("base")
    if isinstance(base, str) and base and base != base_url:
        return base
    return None


def _entry_refs(entry: Mapping[str, Any], *, source: str, base_url: str,
                channel_adult: bool | None, superseded: set[str]
                ) -> tuple[list[MediaRef], list[Dropped]]:
    """The refs of one entry (its pictures with the post's fields) and what was dropped."""
    # FeedBurner's link goes through its redirector; origLink is the publisher's own page.
    post_url = next((clean_text(link) for link in (entry.get("feedburner_origlink"),
                                                  entry.get("link"))
                     if isinstance(link, str) and is_http_url(link)), None)
    urls, dropped = _entry_pictures(entry, base_url=base_url, post_url=post_url,
                                    superseded=superseded)
    adult = _is_adult(entry.get("media_rating"))
    if adult is None:
        adult = channel_adult
    flags = (f"{KIND}:rating:adult",) if adult else ()
    tags = lower_unique([clean_text(term) for term in _terms(entry.get("tags"))])
    author = entry.get("author")
    posted_at = _posted_at(entry)
    refs = [MediaRef(url=url, source=source, post_url=post_url,
                     author=clean_text(str(author)) if author else None, flags=flags,
                     tags=tags, posted_at=posted_at)
            for url in urls]
    return refs, dropped


def _entry_pictures(entry: Mapping[str, Any], *, base_url: str, post_url: str | None,
                    superseded: set[str]) -> tuple[list[str], list[Dropped]]:
    """One URL per picture of an entry, the largest rendition; and what was dropped, once."""
    entry_base = (_xml_base(entry.get("title_detail"), base_url)
                  or _xml_base(entry.get("summary_detail"), base_url))
    bases = [entry_base, post_url, base_url]
    thumbnails = _largest_first(entry.get("media_thumbnail") or [])
    item = ItemPictures(frozenset(
        resolve_url(thumbnail["url"], bases) for thumbnail in thumbnails
        if isinstance(thumbnail.get("url"), str)))

    for enclosure in entry.get("enclosures") or []:
        if _is_image(enclosure.get("type"), None, enclosure.get("href")):
            item.add(enclosure.get("href"), bases)
    for content in entry.get("media_content") or []:
        if content.get("url") in superseded:
            continue
        if _is_image(content.get("type"), content.get("medium"), content.get("url")):
            item.add(content.get("url"), bases, width=number(content.get("width")) or None,
                     height=number(content.get("height")) or None,
                     file_size=number(content.get("filesize")),
                     is_default=str(content.get("isdefault") or "").lower() == "true")
    for fragment, fragment_base in _html_fragments(entry, base_url):
        fragment_bases = [fragment_base, post_url, base_url]
        for image in html_images(fragment):
            if image.placeholder:
                item.dropped.append(Dropped(image.placeholder[:200], "lazy_placeholder"))
            item.add(image.url, fragment_bases, width=image.width, height=image.height,
                     explicit=False, classes=image.classes, link=image.link,
                     containers=image.containers)
    urls = item.best()
    if not urls:
        # A thumbnail is only worth having when the item offers nothing larger; of several,
        # the largest declared (width x height, then fileSize), not the first listed.
        largest = ItemPictures()
        for thumbnail in thumbnails:
            largest.add(thumbnail.get("url"), bases,
                        width=number(thumbnail.get("width")) or None,
                        height=number(thumbnail.get("height")) or None)
        item.dropped.extend(largest.dropped)
        urls = [picture.url for picture in largest.pictures][:1]
    if not urls:
        # A podcast episode's own picture (itunes:image); the channel's logo is no episode's.
        episode_image = entry.get("image")
        if isinstance(episode_image, Mapping):
            episode = ItemPictures()
            episode.add(episode_image.get("href"), bases)
            item.dropped.extend(episode.dropped)
            urls = episode.best()
    return urls, list(dict.fromkeys(item.dropped))


def _terms(tags: Any) -> Iterable[str]:
    """The category terms of an entry (term, else label); space-separated schemes split."""
    for tag in tags or []:
        if not isinstance(tag, Mapping):
            continue
        term = str(tag.get("term") or tag.get("label") or "")
        if str(tag.get("scheme") or "").strip().lower() in SPACE_SEPARATED_TAG_SCHEMES:
            yield from term.split()
        else:
            yield term


def _largest_first(thumbnails: list[Any]) -> list[Mapping[str, Any]]:
    """Thumbnails by declared width x height, then fileSize, then isDefault; stable."""
    items = [thumbnail for thumbnail in thumbnails if isinstance(thumbnail, Mapping)]
    return sorted(items, key=lambda item: (
        number(item.get("width")) * number(item.get("height")),
        number(item.get("filesize")), str(item.get("isdefault") or "").lower() == "true"),
        reverse=True)


def _is_image(mime: Any, medium: Any, url: Any) -> bool:
    if isinstance(medium, str) and medium:
        return medium.lower() == "image"
    if isinstance(mime, str) and mime:
        return mime.lower().startswith("image/")
    return isinstance(url, str) and url.lower().split("?", 1)[0].endswith(IMAGE_EXTENSIONS)


def _posted_at(entry: Mapping[str, Any]) -> str | None:
    # dict.get: feedparser's own get() maps updated_parsed to published_parsed with a warning.
    for key in ("published_parsed", "updated_parsed"):
        value = dict.get(entry, key) if isinstance(entry, dict) else entry.get(key)
        if isinstance(value, time.struct_time):
            try:
                return iso_from_epoch(calendar.timegm(value))
            except (OverflowError, ValueError, OSError):
                return None
    return None


def _html_fragments(entry: Mapping[str, Any], base_url: str) -> Iterable[tuple[str, str | None]]:
    """Each HTML text of an entry with the xml:base in force for it (None when undeclared)."""
    details = [entry.get("summary_detail"), *(entry.get("content") or [])]
    for detail in details:
        if isinstance(detail, Mapping) and "html" in str(detail.get("type") or ""):
            yield str(detail.get("value") or ""), _xml_base(detail, base_url)


class RssSource:
    """One feed, polled with If-None-Match / If-Modified-Since."""

    kind = KIND

    def __init__(self, name: str, url: str, http: HttpClient, user_agent: str,
                 max_bytes: int | None = None) -> None:
        self.name = name
        self.url = url
        self._http = http
        self._user_agent = user_agent
        self._max_bytes = max_bytes

    def query_key(self) -> str:
        return f"{KIND}:{self.url}"

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """Fetch the feed unless unchanged since the cursor's validators; parse off the loop."""
        state = load_cursor(cursor)
        headers = {"Accept": ACCEPT, "User-Agent": self._user_agent}
        if isinstance(state.get("etag"), str):
            headers["If-None-Match"] = state["etag"]
        if isinstance(state.get("last_modified"), str):
            headers["If-Modified-Since"] = state["last_modified"]
        document = await self._http.get_document(self.url, headers=headers,
                                                 max_bytes=self._max_bytes)
        if document.status == 304:
            return PollResult(refs=())
        raise_for_status(self.name, document, now)
        result = await asyncio.to_thread(
            read_feed, document.body, source=self.name, base_url=document.url,
            content_type=header(document, "Content-Type"),
        )
        if result.problem:
            log.warning("feed_malformed", source=self.name, url=document.url,
                        problem=result.problem, media=len(result.refs))
        for entry, reason in result.failed_entries:
            log.warning("feed_entry_failed", source=self.name, url=document.url, entry=entry,
                        reason=reason)
        if result.dropped:
            log.info("feed_images_dropped", source=self.name, url=document.url,
                     counts=dict(Counter(item.why for item in result.dropped)),
                     dropped=[{"url": item.url[:200], "why": item.why}
                              for item in result.dropped[:MAX_LOGGED_DROPS]])
        validators = {"etag": header(document, "ETag"),
                      "last_modified": header(document, "Last-Modified")}
        new_state = {key: value for key, value in validators.items() if value}
        # Only entries that could not be read are skipped; images deliberately not taken
        # (share buttons, pixels, smaller copies) are the normal case, logged above at info.
        skipped = [(entry, f"entry_failed: {reason}") for entry, reason in result.failed_entries]
        return PollResult(refs=tuple(result.refs), cursor=dump_cursor(new_state),
                          skipped=tuple(skipped))


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with an rss source's keys."""
    from crawler.config_checks import unknown_source_keys

    problems = unknown_source_keys("an rss source", settings, KEYS)
    url = settings.get("url")
    if url is None:
        problems.append("url: required; the feed's address, e.g. \"https://example.org/feed.xml\"")
    elif not is_http_url(url):
        problems.append(f"url: must be an http(s) URL, got {url!r}")
    return problems


def create(config: SourceConfig, context: SourceContext) -> Source:
    """Build an RssSource from a validated `[[sources]]` table."""
    max_bytes = document_cap(context)
    return RssSource(config.name, str(config.settings["url"]), context.http,
                     context.user_agent, max_bytes)
