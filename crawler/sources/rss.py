"""RSS 2.0, Atom and Media RSS feeds, fetched with a conditional GET and parsed by feedparser.

We fetch the bytes ourselves (capped, through the SSRF guard) and hand them to feedparser as
a file object, so feedparser never fetches anything. Entity declarations are refused before
parsing: feedparser keeps "safe" internal entities, and even those allow a quadratic blow-up.

Keys: `url` (the feed). The cursor holds the validators of the last 200 response
(`{"etag": ..., "last_modified": ...}`); a 304 yields nothing and keeps the cursor.
"""

from __future__ import annotations

import asyncio
import calendar
import html
import io
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

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
# Problems feedparser reports for perfectly readable feeds served with a vague content type.
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


# feedparser flattens <media:group>, losing which media:content are renditions of one
# thing; these find the groups in the raw bytes so that only the largest rendition is kept.
# Every repetition is bounded so that hostile bytes cannot make the scan quadratic.
_GROUP_TAG = re.compile(rb"<(/?)[A-Za-z_][\w.-]{0,64}:group\b[^<>]{0,2000}>")
_CONTENT = re.compile(rb"<[A-Za-z_][\w.-]{0,64}:content\b([^<>]{0,4000})>")
_ATTRIBUTE = re.compile(rb"""([A-Za-z_][\w.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def smaller_renditions(body: bytes) -> set[str]:
    """URLs of media:content that a larger rendition in the same media:group supersedes."""
    losers: set[str] = set()
    for group in _groups(body):
        renditions = []
        for content in _CONTENT.finditer(group):
            attributes = {name.decode("ascii", "replace").lower():
                          html.unescape((double or single).decode("utf-8", "replace"))
                          for name, double, single in _ATTRIBUTE.findall(content.group(1))}
            if attributes.get("url"):
                renditions.append(attributes)
        if len(renditions) > 1:
            best = max(renditions, key=_rendition_size)
            losers.update(item["url"] for item in renditions if item is not best)
    return losers


def _groups(body: bytes) -> list[bytes]:
    """The inner bytes of each <x:group>...</x:group>, in one linear pass."""
    groups: list[bytes] = []
    opened: int | None = None
    for tag in _GROUP_TAG.finditer(body):
        if not tag.group(1):
            opened = tag.end()
        elif opened is not None:
            groups.append(body[opened:tag.start()])
            opened = None
    return groups


def _rendition_size(attributes: Mapping[str, str]) -> tuple[int, int, int]:
    def number(key: str) -> int:
        value = attributes.get(key, "").strip()
        return int(value) if value.isdigit() else 0
    return (number("width") * number("height"), number("filesize"),
            1 if attributes.get("isdefault", "").lower() == "true" else 0)


@dataclass(frozen=True)
class FeedResult:
    """What a feed body gave: the media, and why the feed was malformed (if it was)."""

    refs: list[MediaRef]
    problem: str | None = None


def parse_feed(body: bytes, *, source: str, base_url: str,
               content_type: str | None = None) -> list[MediaRef]:
    """The media of a feed body; raise SourceError when it is not a feed at all."""
    return read_feed(body, source=source, base_url=base_url, content_type=content_type).refs


def read_feed(body: bytes, *, source: str, base_url: str,
              content_type: str | None = None) -> FeedResult:
    """Parse a feed body into media refs, reporting (not raising for) a malformed feed.

    `base_url` is where the feed was fetched from; relative URLs resolve against it
    (or the feed's xml:base), images in item HTML against the item's link.
    """
    if b"<!ENTITY" in body.replace(b"\x00", b""):
        raise SourceError(source, f"feed at {base_url} declares XML entities; refused")
    response_headers = {"content-location": base_url,
                        "content-type": content_type or "application/xml"}
    with warnings.catch_warnings():
        # feedparser warns about its own deprecated key mappings; never let that fail a poll.
        warnings.simplefilter("ignore")
        # HTML is left unresolved by feedparser: images in an item resolve against its link.
        parsed = feedparser.parse(io.BytesIO(body), response_headers=response_headers,
                                  resolve_relative_uris=False, sanitize_html=True)
    entries = list(parsed.get("entries") or [])
    if not parsed.get("version") and not entries:
        cause = parsed.get("bozo_exception")
        detail = f": {cause}" if cause else ""
        raise SourceError(source, f"{base_url} is not an RSS or Atom feed{detail}")
    problem = None
    if parsed.get("bozo") and not isinstance(parsed.get("bozo_exception"), _BENIGN_BOZO):
        problem = str(parsed.get("bozo_exception") or "malformed feed")
    channel_adult = _is_adult(parsed.get("feed", {}).get("media_rating"))
    superseded = smaller_renditions(body) if b":group" in body else set()
    refs: list[MediaRef] = []
    seen: set[str] = set()
    for entry in entries:
        for ref in _entry_refs(entry, source=source, base_url=base_url,
                               channel_adult=channel_adult, superseded=superseded):
            if ref.url not in seen:
                seen.add(ref.url)
                refs.append(ref)
    return FeedResult(refs=refs, problem=problem)


def _is_adult(rating: Any) -> bool | None:
    """True/False for a Media RSS rating, None when there is none."""
    if not isinstance(rating, Mapping):
        return None
    content = str(rating.get("content") or "").strip().lower()
    if not content:
        return None
    return content in ADULT_RATINGS


def _entry_refs(entry: Mapping[str, Any], *, source: str, base_url: str,
                channel_adult: bool | None, superseded: set[str]) -> list[MediaRef]:
    link = entry.get("link")
    post_url = link if is_http_url(link) else None
    item_base = str(entry.get("title_detail", {}).get("base") or base_url) if isinstance(
        entry.get("title_detail"), Mapping) else base_url
    html_base = post_url or item_base

    primary: list[str] = []
    for enclosure in entry.get("enclosures") or []:
        if _is_image(enclosure.get("type"), None, enclosure.get("href")):
            primary.append(urljoin(item_base, str(enclosure.get("href") or "")))
    for content in entry.get("media_content") or []:
        if content.get("url") in superseded:
            continue
        if _is_image(content.get("type"), content.get("medium"), content.get("url")):
            primary.append(urljoin(item_base, str(content.get("url") or "")))
    for fragment in _html_fragments(entry):
        primary.extend(urljoin(html_base, src) for src in _image_sources(fragment))
    urls = [url for url in primary if is_http_url(url)]
    if not urls:
        # A thumbnail is only worth having when the item offers nothing larger.
        thumbnails = [urljoin(item_base, str(thumbnail.get("url") or ""))
                      for thumbnail in entry.get("media_thumbnail") or []]
        urls = [url for url in thumbnails if is_http_url(url)][:1]

    adult = _is_adult(entry.get("media_rating"))
    if adult is None:
        adult = channel_adult
    flags = (f"{KIND}:rating:adult",) if adult else ()
    terms = [str(tag.get("term") or tag.get("label") or "")
             for tag in entry.get("tags") or [] if isinstance(tag, Mapping)]
    tags = lower_unique(terms)
    author = entry.get("author")
    posted_at = _posted_at(entry)
    refs: list[MediaRef] = []
    for url in dict.fromkeys(urls):
        refs.append(MediaRef(
            url=url, source=source, post_url=post_url,
            author=str(author) if author else None, flags=flags, tags=tags,
            posted_at=posted_at,
        ))
    return refs


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
            return iso_from_epoch(calendar.timegm(value))
    return None


def _html_fragments(entry: Mapping[str, Any]) -> Iterable[str]:
    summary = entry.get("summary_detail")
    if isinstance(summary, Mapping) and "html" in str(summary.get("type") or ""):
        yield str(summary.get("value") or "")
    for content in entry.get("content") or []:
        if isinstance(content, Mapping) and "html" in str(content.get("type") or ""):
            yield str(content.get("value") or "")


class _ImageCollector(HTMLParser):
    """Collects `<img src>` values, skipping 1×1 tracking pixels."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img":
            return
        values = {name: value or "" for name, value in attrs}
        if values.get("width") in ("0", "1") or values.get("height") in ("0", "1"):
            return
        src = values.get("src", "").strip()
        if src:
            self.sources.append(src)


def _image_sources(html: str) -> list[str]:
    collector = _ImageCollector()
    collector.feed(html)
    collector.close()
    return collector.sources


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
        validators = {"etag": header(document, "ETag"),
                      "last_modified": header(document, "Last-Modified")}
        new_state = {key: value for key, value in validators.items() if value}
        return PollResult(refs=tuple(result.refs), cursor=dump_cursor(new_state))


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with an rss source's keys."""
    problems = [f"{key}: unknown key for an rss source (known: url)"
                for key in settings if key not in KEYS]
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
