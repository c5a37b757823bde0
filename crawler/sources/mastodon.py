"""Mastodon timelines: a hashtag, the public or local timeline, an account, or a list.

Keys: `instance` (e.g. "https://mastodon.social") and exactly one of `hashtag`,
`timeline` ("public" | "local"), `account` (an acct such as "user@example.social", resolved
once to the server's id) or `list` (a list id; needs `access_token`, sent as a Bearer token
and never logged). `only_media` (default true) asks the server for media statuses only;
`backfill` (default 200) bounds how many of the newest statuses the first poll takes.

Paging: new statuses are read with `min_id=<highest id seen>`, repeated until a page comes
back empty. (With `since_id` the server returns the *newest* page, silently skipping
whatever lay between when more than a page arrived.) Pages come newest first even with
`min_id`, so the next `min_id` is the page's highest id. Ids are strings local to the
server; they compare as integers (by length, then lexically). The first poll pages back
from the top with `max_id` until `backfill` statuses were read.

Statuses and attachments are read by `mastodon_statuses`.

The cursor is `{"min_id": ..., "account_id": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import structlog

from crawler.errors import SourceError
from crawler.sources.base import Document, HttpClient, PollResult, Source, SourceContext
from crawler.sources.common import (
    document_cap,
    dump_cursor,
    header,
    is_http_url,
    load_cursor,
    parse_iso_timestamp,
    parse_json,
    raise_for_status,
)
from crawler.sources.mastodon_statuses import (
    PENDING_MEDIA_WINDOW_S,
    SKIP_REASONS,
    StatusMedia,
    attachment_kind,
    attachment_url,
    parse_statuses,
    status_media,
)

if TYPE_CHECKING:
    from crawler.config import SourceConfig

__all__ = ["PENDING_MEDIA_WINDOW_S", "SKIP_REASONS", "MastodonSource", "StatusMedia",
           "attachment_kind", "attachment_url", "create", "id_key", "parse_statuses",
           "status_media", "validate"]

log = structlog.get_logger()

KIND = "mastodon"
SELECTORS = ("hashtag", "timeline", "account", "list")
KEYS = frozenset({"instance", *SELECTORS, "access_token", "only_media", "backfill"})
PAGE_LIMIT = 40  # the API's maximum
MAX_PAGES_PER_POLL = 10
DEFAULT_BACKFILL = 200
MAX_BACKFILL = 5000
DEFAULT_RATE_LIMIT_WAIT_S = 300.0
ACCESS_DENIED = frozenset({401, 403, 422})
def id_key(status_id: str) -> tuple[int, str]:
    """Sort key for Mastodon ids: numeric strings of any length, compared as integers."""
    return (len(status_id), status_id)


def max_id(ids: list[str]) -> str | None:
    return max(ids, key=id_key) if ids else None


def min_id(ids: list[str]) -> str | None:
    return min(ids, key=id_key) if ids else None


def rate_limit_wait_s(document: Document, now: float) -> float | None:
    """Seconds until the rate limit resets, when X-RateLimit-Remaining says none are left."""
    remaining = header(document, "X-RateLimit-Remaining")
    if remaining is None:
        return None
    try:
        if float(remaining) > 0:
            return None
    except ValueError:
        return None
    reset_s = parse_iso_timestamp(header(document, "X-RateLimit-Reset"))
    if reset_s is None:
        return DEFAULT_RATE_LIMIT_WAIT_S
    return max(1.0, reset_s - now)


def access_notice(instance_body: bytes | None, *, instance: str, timeline: str,
                  status: int | None) -> str | None:
    """A human notice when a server keeps a timeline from anonymous readers.

    `instance_body` is the server's /api/v2/instance JSON (None if unreadable). `status` is
    the HTTP status of the refused request, or None when it merely came back empty; then a
    notice is only given when the server says the timeline is not public.
    """
    access: Mapping[str, Any] = {}
    version = ""
    if instance_body:
        try:
            info = json.loads(instance_body)
        except ValueError:
            info = None
        if isinstance(info, Mapping):
            version = str(info.get("version") or "")
            configuration = info.get("configuration")
            if isinstance(configuration, Mapping) and isinstance(
                    configuration.get("timelines_access"), Mapping):
                access = configuration["timelines_access"]
    feed, scope = {"public": ("live_feeds", "remote"), "local": ("live_feeds", "local"),
                   "hashtag": ("hashtag_feeds", "remote")}.get(timeline, ("", ""))
    setting = access.get(feed, {}).get(scope) if isinstance(access.get(feed), Mapping) else None
    server = f"{instance}" + (f" (Mastodon {version})" if version else "")
    if isinstance(setting, str) and setting != "public":
        return (f"{server} does not show its {timeline} timeline to anonymous readers "
                f"(timelines_access: {setting}); use another server or an access_token")
    if status is None:
        return None
    return (f"{server} refused the {timeline} timeline (HTTP {status}); it probably requires "
            f"a login; use another server or an access_token")


class MastodonSource:
    """One Mastodon timeline, polled with min_id."""

    kind = KIND

    def __init__(self, name: str, *, instance: str, selector: str, value: str,
                 http: HttpClient, user_agent: str, access_token: str | None = None,
                 only_media: bool = True, backfill: int = DEFAULT_BACKFILL,
                 max_bytes: int | None = None) -> None:
        self.name = name
        self.instance = instance.rstrip("/")
        self.selector = selector
        self.value = value
        self.only_media = only_media
        self.backfill = backfill
        self._http = http
        self._user_agent = user_agent
        self._access_token = access_token
        self._max_bytes = max_bytes
        self._notice: str | None = None
        self._notice_read = False

    def query_key(self) -> str:
        return dump_cursor({"kind": KIND, "instance": self.instance, self.selector: self.value,
                            "only_media": self.only_media})

    def __repr__(self) -> str:  # never show the token
        return f"MastodonSource(name={self.name!r}, {self.selector}={self.value!r})"

    async def _get(self, path: str, params: Mapping[str, str]) -> Document:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._access_token:
            headers["Authorization"] = f"Bearer {self._access_token}"
        query = f"?{urlencode(params)}" if params else ""
        return await self._http.get_document(f"{self.instance}{path}{query}", headers=headers,
                                             max_bytes=self._max_bytes)

    async def _timeline_path(self, state: dict[str, Any], now: float) -> str:
        if self.selector == "hashtag":
            return f"/api/v1/timelines/tag/{quote(self.value, safe='')}"
        if self.selector == "timeline":
            return "/api/v1/timelines/public"
        if self.selector == "list":
            return f"/api/v1/timelines/list/{quote(self.value, safe='')}"
        account_id = state.get("account_id")
        if not isinstance(account_id, str):
            document = await self._get("/api/v1/accounts/lookup", {"acct": self.value})
            if document.status == 404:
                raise SourceError(self.name, f"account {self.value!r} not found on "
                                             f"{self.instance}")
            self._raise_for_status(document, now)
            account = parse_json(self.name, document.body, document.url)
            if not isinstance(account, Mapping) or not isinstance(account.get("id"), str):
                raise SourceError(self.name, f"unexpected account lookup answer for "
                                             f"{self.value!r}")
            account_id = account["id"]
            state["account_id"] = account_id
        return f"/api/v1/accounts/{quote(account_id, safe='')}/statuses"

    def _params(self, **paging: str) -> dict[str, str]:
        params = {"limit": str(PAGE_LIMIT), **paging}
        if self.only_media and self.selector != "list":
            params["only_media"] = "true"
        if self.selector == "timeline" and self.value == "local":
            params["local"] = "true"
        return params

    def _raise_for_status(self, document: Document, now: float) -> None:
        if document.status == 429:
            wait_s = rate_limit_wait_s(document, now) or DEFAULT_RATE_LIMIT_WAIT_S
            raise SourceError(self.name, f"rate limited (HTTP 429) by {self.instance}",
                              retry_after_s=wait_s)
        raise_for_status(self.name, document, now)

    async def _access_notice(self, status: int | None) -> str | None:
        if not self._notice_read:
            self._notice_read = True
            body: bytes | None = None
            try:
                document = await self._get("/api/v2/instance", {})
                body = document.body if document.status == 200 else None
            except Exception as error:  # noqa: BLE001 - the notice is best effort
                log.info("mastodon_instance_unreadable", source=self.name, error=str(error))
            timeline = self.value if self.selector == "timeline" else self.selector
            self._notice = access_notice(body, instance=self.instance, timeline=timeline,
                                         status=status)
        return self._notice

    async def _page(self, path: str, now: float, **paging: str) -> tuple[list[Any], Document]:
        document = await self._get(path, self._params(**paging))
        if document.status in ACCESS_DENIED:
            raise _AccessDenied(document.status)
        self._raise_for_status(document, now)
        page = parse_json(self.name, document.body, document.url)
        if not isinstance(page, list):
            raise SourceError(self.name, f"expected a JSON array of statuses from "
                                         f"{document.url}")
        return page, document

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """Read every status newer than the cursor (or backfill on the first poll)."""
        state = load_cursor(cursor)
        path = await self._timeline_path(state, now)
        newest = state.get("min_id") if isinstance(state.get("min_id"), str) else None
        statuses: list[Any] = []
        retry_after_s: float | None = None
        full = False
        try:
            if newest is None:
                retry_after_s = await self._backfill(path, now, statuses)
            else:
                retry_after_s, full = await self._catch_up(path, now, newest, statuses)
        except _AccessDenied as denied:
            notice = await self._access_notice(denied.status)
            return PollResult(refs=(), cursor=None, notice=notice)

        media = status_media(statuses, source=self.name, instance=self.instance, now=now)
        notice = None
        if newest is None and not statuses:
            notice = await self._access_notice(None)
        state["min_id"] = _next_min_id(newest, media.status_ids, media.pending_ids)
        if state["min_id"] is None:
            del state["min_id"]
        if retry_after_s is not None:
            full = False
        return PollResult(refs=tuple(media.refs), cursor=dump_cursor(state), full=full,
                          retry_after_s=retry_after_s, notice=notice,
                          skipped=tuple(media.skipped))

    async def _backfill(self, path: str, now: float, statuses: list[Any]) -> float | None:
        older_than: str | None = None
        for _ in range(max(1, -(-self.backfill // PAGE_LIMIT)) + 1):
            wanted = max(1, min(PAGE_LIMIT, self.backfill - len(statuses)))
            paging = {"limit": str(wanted)}
            if older_than is not None:
                paging["max_id"] = older_than
            page, document = await self._page(path, now, **paging)
            if self.backfill == 0:
                # Start from "now": remember the newest id, yield nothing.
                statuses.extend({"id": item["id"]} for item in page
                                if isinstance(item, Mapping) and isinstance(item.get("id"), str))
                return None
            statuses.extend(page)
            wait_s = rate_limit_wait_s(document, now)
            ids = [item["id"] for item in page
                   if isinstance(item, Mapping) and isinstance(item.get("id"), str)]
            if wait_s is not None or not ids or len(statuses) >= self.backfill:
                return wait_s
            older_than = min_id(ids)
        return None

    async def _catch_up(self, path: str, now: float, newest: str,
                        statuses: list[Any]) -> tuple[float | None, bool]:
        after = newest
        for _ in range(MAX_PAGES_PER_POLL):
            page, document = await self._page(path, now, min_id=after)
            ids = [item["id"] for item in page
                   if isinstance(item, Mapping) and isinstance(item.get("id"), str)]
            statuses.extend(page)
            wait_s = rate_limit_wait_s(document, now)
            if not ids:
                return wait_s, False
            highest = max(ids, key=id_key)
            if id_key(highest) <= id_key(after):
                # A server ignoring min_id would loop forever; stop with what we have.
                return wait_s, False
            after = highest
            if wait_s is not None:
                return wait_s, True
        return None, True


class _AccessDenied(Exception):
    """The server refused the timeline to us (401/403/422)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _next_min_id(previous: str | None, ids: list[str], pending: list[str]) -> str | None:
    """The next `min_id`: the highest id read, held back before any status still processing."""
    candidates = ids
    if pending:
        first_pending = min(pending, key=id_key)
        candidates = [item for item in ids if id_key(item) < id_key(first_pending)]
    best = max_id(candidates + ([previous] if previous else []))
    return best


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with a mastodon source's keys."""
    from crawler.config_checks import unknown_source_keys

    problems = unknown_source_keys("a mastodon source", settings, KEYS)
    instance = settings.get("instance")
    if instance is None:
        problems.append("instance: required; the server's address, e.g. "
                        "\"https://mastodon.social\"")
    elif not is_http_url(instance) or urlsplit(str(instance)).path not in ("", "/"):
        problems.append(f"instance: must be a server address such as "
                        f"\"https://mastodon.social\", got {instance!r}")
    chosen = [key for key in SELECTORS if key in settings]
    if len(chosen) != 1:
        problems.append(f"{chosen[1] if len(chosen) > 1 else 'hashtag'}: give exactly one of "
                        f"hashtag, timeline, account or list"
                        + (f" (got {', '.join(chosen)})" if chosen else ""))
    for key in chosen:
        value = settings[key]
        if key == "list" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{key}: must be a non-empty string")
        elif key == "hashtag" and any(ch in value for ch in " /?#&") and not (
                value.startswith("#") and not any(ch in value[1:] for ch in " /?#&")):
            problems.append(f"hashtag: {value!r} is not a hashtag; give it without spaces, "
                            f"e.g. \"megane\"")
        elif key == "timeline" and value not in ("public", "local"):
            problems.append(f"timeline: must be \"public\" or \"local\", got {value!r}")
        elif key == "account" and not _valid_acct(value):
            problems.append(f"account: {value!r} is not an acct such as "
                            f"\"user\" or \"user@example.social\"")
    if "list" in settings and not isinstance(settings.get("access_token"), str):
        problems.append("access_token: required for a list timeline (a token with the "
                        "read:lists scope)")
    elif "access_token" in settings and (not isinstance(settings["access_token"], str)
                                         or not settings["access_token"].strip()):
        problems.append("access_token: must be a non-empty string")
    if "only_media" in settings and not isinstance(settings["only_media"], bool):
        problems.append("only_media: must be true or false")
    if "backfill" in settings:
        backfill = settings["backfill"]
        if isinstance(backfill, bool) or not isinstance(backfill, int) or not (
                0 <= backfill <= MAX_BACKFILL):
            problems.append(f"backfill: must be a whole number from 0 to {MAX_BACKFILL}")
    return problems


def _valid_acct(value: str) -> bool:
    parts = value.lstrip("@").split("@")
    return 1 <= len(parts) <= 2 and all(part and " " not in part and "/" not in part
                                        for part in parts)


def create(config: SourceConfig, context: SourceContext) -> Source:
    """Build a MastodonSource from a validated `[[sources]]` table."""
    settings = config.settings
    selector = next(key for key in SELECTORS if key in settings)
    value = str(settings[selector]).strip()
    if selector == "hashtag":
        value = value.lstrip("#")
    elif selector == "account":
        value = value.lstrip("@")
    return MastodonSource(
        config.name, instance=str(settings["instance"]), selector=selector, value=value,
        http=context.http, user_agent=context.user_agent,
        access_token=settings.get("access_token"),
        only_media=bool(settings.get("only_media", True)),
        backfill=int(settings.get("backfill", DEFAULT_BACKFILL)),
        max_bytes=document_cap(context),
    )
