"""Bluesky feeds through the public AppView: an author's media posts, a feed generator, a list.

Keys: exactly one of `actor` (a handle such as "bsky.app" or a DID), `feed` (a feed
generator's at:// URI) or `list` (a list's at:// URI); `service` (default
"https://public.api.bsky.app"); `backfill` (default 100: how many items the first poll
takes).

There is no "since" in these endpoints: each poll pages from the top (the API's own `cursor`
parameter) until it meets a post it has already seen. (A feed generator need not be in time
order: its pages are read whole, and paging stops after a page holding a seen post.) The cursor
keeps the URIs of the most recent posts seen, and, when a burst was bigger than one poll's page
budget, the API cursor where that sweep stopped, which the next poll finishes.

Images come from `app.bsky.embed.images#view` (`images[].fullsize`), from
`app.bsky.embed.recordWithMedia#view` (under `media`) and from `app.bsky.embed.gallery#view`
(`items[].fullsize`); videos are yielded with a skip reason. NSFW signals are the labels of
`NSFW_LABELS` (the adult and graphic vocabulary of Bluesky's moderation service: porn,
sexual, sexual-figurative, nudity, graphic-media, and the older gore and nsfw) on the post,
on the author's account, or self-applied in the record; a negation (`neg`) removes an
earlier label with the same value from the same labeler, and a label whose `exp` has passed
does not count. Hashtags (facets and the record's `tags`) become tags. Pages are read by
`bluesky_posts`: a malformed feed item costs only that item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import structlog

from crawler.errors import SourceError
from crawler.sources.base import Document, HttpClient, PollResult, Source, SourceContext
from crawler.sources.bluesky_posts import (
    NSFW_LABELS,
    FeedPage,
    active_labels,
    nsfw_flags,
    parse_feed,
    post_media,
    read_page,
    self_labels,
)
from crawler.sources.common import (
    document_cap,
    dump_cursor,
    header,
    is_http_url,
    load_cursor,
    raise_for_status,
    string_list,
)
from storage.records import MediaRef

if TYPE_CHECKING:
    from crawler.config import SourceConfig

__all__ = ["NSFW_LABELS", "BlueskySource", "FeedPage", "active_labels", "create",
           "nsfw_flags", "parse_feed", "post_media", "read_page", "self_labels", "validate"]

log = structlog.get_logger()

KIND = "bluesky"
SELECTORS = ("actor", "feed", "list")
KEYS = frozenset({*SELECTORS, "service", "backfill"})
DEFAULT_SERVICE = "https://public.api.bsky.app"
PAGE_LIMIT = 100  # the API's maximum
MAX_PAGES_PER_POLL = 10
DEFAULT_BACKFILL = 100
MAX_BACKFILL = 2000
SEEN_KEPT = 300
DEFAULT_RATE_LIMIT_WAIT_S = 300.0
ENDPOINTS = {
    "actor": "app.bsky.feed.getAuthorFeed",
    "feed": "app.bsky.feed.getFeed",
    "list": "app.bsky.feed.getListFeed",
}


def rate_limit_wait_s(document: Document, now: float) -> float | None:
    """Seconds until RateLimit-Reset (epoch seconds) when RateLimit-Remaining is 0."""
    remaining = header(document, "RateLimit-Remaining")
    if remaining is None:
        return None
    try:
        if float(remaining) > 0:
            return None
        reset_s = float(header(document, "RateLimit-Reset") or "nan")
    except ValueError:
        return DEFAULT_RATE_LIMIT_WAIT_S
    if not math.isfinite(reset_s):
        return DEFAULT_RATE_LIMIT_WAIT_S
    return max(1.0, reset_s - now)


class BlueskySource:
    """An author feed, a feed generator or a list feed, paged from the top."""

    kind = KIND

    def __init__(self, name: str, *, selector: str, value: str, http: HttpClient,
                 user_agent: str, service: str = DEFAULT_SERVICE,
                 backfill: int = DEFAULT_BACKFILL,
                 max_bytes: int | None = None) -> None:
        self.name = name
        self.selector = selector
        self.value = value
        self.service = service.rstrip("/")
        self.backfill = backfill
        self._http = http
        self._user_agent = user_agent
        self._max_bytes = max_bytes

    def query_key(self) -> str:
        return dump_cursor({"kind": KIND, "service": self.service, self.selector: self.value})

    def _url(self, api_cursor: str | None, limit: int) -> str:
        params = {self.selector: self.value, "limit": str(limit)}
        if self.selector == "actor":
            params["filter"] = "posts_with_media"
        if api_cursor:
            params["cursor"] = api_cursor
        query = urlencode(params, quote_via=quote)
        return f"{self.service}/xrpc/{ENDPOINTS[self.selector]}?{query}"

    async def _page(self, api_cursor: str | None, limit: int,
                    now: float) -> tuple[FeedPage, float | None]:
        document = await self._http.get_document(
            self._url(api_cursor, limit), max_bytes=self._max_bytes,
            headers={"Accept": "application/json", "User-Agent": self._user_agent})
        if document.status == 429:
            wait_s = rate_limit_wait_s(document, now)
            raise SourceError(self.name, f"rate limited (HTTP 429) by {self.service}",
                              retry_after_s=wait_s or DEFAULT_RATE_LIMIT_WAIT_S)
        raise_for_status(self.name, document, now)
        return read_page(document.body, source=self.name, now=now), rate_limit_wait_s(document, now)

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """Page from the top until a seen post; then finish an unfinished older sweep."""
        state = load_cursor(cursor)
        seen_before = string_list(state.get("seen")) or []
        first_poll = "seen" not in state
        seen = set(seen_before)
        backlog = state.get("backlog") if isinstance(state.get("backlog"), str) else None
        budget = MAX_PAGES_PER_POLL
        new_uris: list[str] = []
        refs: list[MediaRef] = []
        skipped: list[tuple[str, str]] = []

        top = await self._sweep(None, seen, new_uris, refs, skipped, budget, now,
                                limit_items=self.backfill if first_poll else None)
        budget -= top.pages
        retry_after_s = top.retry_after_s
        if first_poll:
            next_backlog = None  # backfill is best effort: older posts are not chased
        elif top.unfinished is not None:
            if backlog is not None:
                log.warning("bluesky_backlog_dropped", source=self.name,
                            reason="a second burst arrived before the first was read")
            next_backlog = top.unfinished
        else:
            next_backlog = backlog
            if backlog is not None and budget > 0 and retry_after_s is None:
                rest = await self._sweep(backlog, seen, new_uris, refs, skipped, budget, now)
                retry_after_s = rest.retry_after_s
                next_backlog = rest.unfinished

        kept = list(dict.fromkeys(new_uris + seen_before))[:SEEN_KEPT]
        new_state: dict[str, Any] = {"seen": kept}
        if next_backlog:
            new_state["backlog"] = next_backlog
        return PollResult(refs=tuple(refs), cursor=dump_cursor(new_state),
                          full=next_backlog is not None and retry_after_s is None,
                          retry_after_s=retry_after_s, skipped=tuple(skipped))

    async def _sweep(self, api_cursor: str | None, seen: set[str], new_uris: list[str],
                     refs: list[MediaRef], skipped: list[tuple[str, str]], budget: int,
                     now: float,
                     limit_items: int | None = None) -> _Sweep:
        """Read pages from `api_cursor` until a seen (non-repost) post, the end or the budget."""
        pages = 0
        taken = 0
        while pages < budget:
            limit = PAGE_LIMIT if limit_items is None else max(1, min(PAGE_LIMIT,
                                                                      limit_items - taken))
            page, wait_s = await self._page(api_cursor, limit, now)
            pages += 1
            skipped.extend(page.skipped)
            met_seen = False
            for uri, repost in zip(page.uris, page.reposts, strict=True):
                if uri in seen:
                    # A repost can lift an old post to the top; only an original post
                    # already seen marks where the previous poll stopped. In a time-ordered
                    # feed all below it is old; a feed generator ranks posts as it likes,
                    # so its page is read to the end.
                    if not repost:
                        met_seen = True
                        if self.selector != "feed":
                            break
                    continue
                seen.add(uri)
                new_uris.append(uri)
                taken += 1
                if limit_items != 0:  # backfill = 0: only note where "now" is
                    refs.extend(page.refs_by_uri[uri])
            done = (met_seen or page.cursor is None or not page.uris
                    or (limit_items is not None and taken >= limit_items))
            if done:
                return _Sweep(pages, None, wait_s)
            api_cursor = page.cursor
            if wait_s is not None:
                return _Sweep(pages, api_cursor, wait_s)
        return _Sweep(pages, api_cursor, None)


@dataclass(frozen=True)
class _Sweep:
    pages: int
    unfinished: str | None  # the API cursor to resume from, when the sweep was cut short
    retry_after_s: float | None


def _valid_actor(value: str) -> bool:
    if value.startswith("did:"):
        return value.count(":") >= 2 and " " not in value
    labels = value.lstrip("@").split(".")
    return len(labels) >= 2 and all(label and all(ch.isalnum() or ch == "-" for ch in label)
                                    for label in labels)


def _valid_at_uri(value: str, collection: str) -> bool:
    parts = value.split("/")
    # at://<did or handle>/<collection>/<rkey>
    return (value.startswith("at://") and len(parts) == 5 and bool(parts[2])
            and parts[3] == collection and bool(parts[4]))


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with a bluesky source's keys."""
    from crawler.config_checks import unknown_source_keys

    problems = unknown_source_keys("a bluesky source", settings, KEYS)
    chosen = [key for key in SELECTORS if key in settings]
    if len(chosen) != 1:
        problems.append(f"{chosen[1] if len(chosen) > 1 else 'actor'}: give exactly one of "
                        f"actor, feed or list" + (f" (got {', '.join(chosen)})" if chosen else ""))
    for key in chosen:
        value = settings[key]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{key}: must be a non-empty string")
        elif key == "actor" and not _valid_actor(value.strip()):
            problems.append(f"actor: {value!r} is not a handle (\"alice.bsky.social\") or a DID")
        elif key == "feed" and not _valid_at_uri(value.strip(), "app.bsky.feed.generator"):
            problems.append(f"feed: {value!r} is not a feed generator URI such as "
                            f"\"at://did:plc:.../app.bsky.feed.generator/name\"")
        elif key == "list" and not _valid_at_uri(value.strip(), "app.bsky.graph.list"):
            problems.append(f"list: {value!r} is not a list URI such as "
                            f"\"at://did:plc:.../app.bsky.graph.list/id\"")
    if "service" in settings and not is_http_url(settings["service"]):
        problems.append(f"service: must be an http(s) URL such as \"{DEFAULT_SERVICE}\"")
    if "backfill" in settings:
        backfill = settings["backfill"]
        if isinstance(backfill, bool) or not isinstance(backfill, int) or not (
                0 <= backfill <= MAX_BACKFILL):
            problems.append(f"backfill: must be a whole number from 0 to {MAX_BACKFILL}")
    return problems


def create(config: SourceConfig, context: SourceContext) -> Source:
    """Build a BlueskySource from a validated `[[sources]]` table."""
    settings = config.settings
    selector = next(key for key in SELECTORS if key in settings)
    value = str(settings[selector]).strip()
    if selector == "actor":
        value = value.lstrip("@")
    return BlueskySource(
        config.name, selector=selector, value=value, http=context.http,
        user_agent=context.user_agent, service=str(settings.get("service", DEFAULT_SERVICE)),
        backfill=int(settings.get("backfill", DEFAULT_BACKFILL)),
        max_bytes=document_cap(context),
    )
