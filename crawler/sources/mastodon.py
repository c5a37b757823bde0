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

Attachments: an `image` is read from `url`; `video`, `gifv` and `audio` are yielded with a
skip reason; `unknown` (a remote file the server has not fetched yet), a missing type or a
type this version does not know is read from `remote_url` (then `url`) and the file's magic
bytes decide. An attachment without any URL costs only itself (an image still being
processed holds the cursor back for a while).

The cursor is `{"min_id": ..., "account_id": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import structlog

from crawler.errors import SourceError
from crawler.sources.base import Document, HttpClient, PollResult, Source, SourceContext
from crawler.sources.common import (
    as_mapping,
    document_cap,
    dump_cursor,
    header,
    is_http_url,
    load_cursor,
    lower_unique,
    parse_iso_timestamp,
    parse_json,
    raise_for_status,
)
from storage.records import MediaRef

if TYPE_CHECKING:
    from crawler.config import SourceConfig

log = structlog.get_logger()

KIND = "mastodon"
SELECTORS = ("hashtag", "timeline", "account", "list")
KEYS = frozenset({"instance", *SELECTORS, "access_token", "only_media", "backfill"})
PAGE_LIMIT = 40  # the API's maximum
MAX_PAGES_PER_POLL = 10
DEFAULT_BACKFILL = 200
MAX_BACKFILL = 5000
# An attachment without a URL is usually still being processed; wait this long for it.
PENDING_MEDIA_WINDOW_S = 3600.0
DEFAULT_RATE_LIMIT_WAIT_S = 300.0
ACCESS_DENIED = frozenset({401, 403, 422})
# Known non-image attachment types, yielded with these reasons (recorded as rejected).
SKIP_REASONS = {
    "video": "mastodon: video attachment",
    "gifv": "mastodon: gifv attachment (an MP4 video)",
    "audio": "mastodon: audio attachment",
}


def id_key(status_id: str) -> tuple[int, str]:
    """Sort key for Mastodon ids: numeric strings of any length, compared as integers."""
    return (len(status_id), status_id)


def max_id(ids: list[str]) -> str | None:
    return max(ids, key=id_key) if ids else None


def min_id(ids: list[str]) -> str | None:
    return min(ids, key=id_key) if ids else None


@dataclass(frozen=True)
class StatusMedia:
    """Media from a page of statuses.

    `pending_ids` are statuses whose image has no URL yet; `skipped` are the statuses and
    attachments that cost only themselves, each as (where, reason).
    """

    refs: list[MediaRef]
    status_ids: list[str]
    pending_ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_statuses(body: bytes, *, source: str, instance: str, now: float) -> list[MediaRef]:
    """The media of a JSON array of statuses (a timeline page).

    Raises SourceError when the body is not a JSON array; a malformed status or attachment
    inside it costs only itself (logged with its reason).
    """
    statuses = parse_json(source, body)
    if not isinstance(statuses, list):
        raise SourceError(source, "expected a JSON array of statuses")
    return status_media(statuses, source=source, instance=instance, now=now).refs


def status_media(statuses: list[Any], *, source: str, instance: str,
                 now: float) -> StatusMedia:
    """Media refs of decoded statuses: reblogs resolved, non-images marked with a skip reason.

    Each status is its own unit of work: whatever goes wrong inside one is logged and
    recorded in `skipped`, and the page goes on.
    """
    refs: list[MediaRef] = []
    ids: list[str] = []
    pending: list[str] = []
    skipped: list[tuple[str, str]] = []
    host = urlsplit(instance).hostname or ""
    for position, status in enumerate(statuses):
        if not isinstance(status, Mapping) or not isinstance(status.get("id"), str):
            skipped.append((f"status #{position}", "mastodon: not a status (no string id)"))
            log.info("source_entry_skipped", source=source, entry=position,
                     reason="mastodon: not a status (no string id)")
            continue
        status_id = status["id"]
        ids.append(status_id)
        reblog = status.get("reblog")
        original: Mapping[str, Any] = reblog if isinstance(reblog, Mapping) else status
        try:
            media = _original_media(original, source=source, host=host, now=now)
        except Exception as error:  # noqa: BLE001 - a status is the unit of isolation
            reason = f"mastodon: unreadable status ({type(error).__name__}: {error})"
            skipped.append((status_id, reason))
            log.warning("source_entry_failed", source=source, entry=status_id, reason=reason)
            continue
        refs.extend(media.refs)
        skipped.extend(media.skipped)
        if media.waiting:
            pending.append(status_id)
    return StatusMedia(refs=refs, status_ids=ids, pending_ids=pending, skipped=skipped)


@dataclass(frozen=True)
class _OriginalMedia:
    refs: list[MediaRef]
    waiting: bool
    skipped: list[tuple[str, str]]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def attachment_kind(attachment: Mapping[str, Any]) -> str:
    """The attachment's type, lower-cased; a missing or non-text type is "unknown"."""
    kind = _text(attachment.get("type"))
    return kind.lower() if kind else "unknown"


def attachment_url(attachment: Mapping[str, Any], kind: str) -> str | None:
    """The URL to fetch for an attachment, or None when it has none.

    An image is read from `url` (the server's copy), then `remote_url`. Any other type that
    is not a known non-image ("unknown": a remote file the server has not fetched yet, or a
    type this version does not know) is read from `remote_url`, the original, then `url`;
    the file's magic bytes decide downstream whether it is an image. An http(s) candidate
    wins over another scheme, but no URL is dropped for its scheme: the pipeline records
    those as rejected (`bad_scheme`). The preview is never the picture.
    """
    order = ("url", "remote_url") if kind == "image" or kind in SKIP_REASONS else (
        "remote_url", "url")
    candidates = [text for key in order if (text := _text(attachment.get(key)))]
    if not candidates:
        return None
    return next((candidate for candidate in candidates if is_http_url(candidate)),
                candidates[0])


def _original_media(status: Mapping[str, Any], *, source: str, host: str,
                    now: float) -> _OriginalMedia:
    uri = _text(status.get("uri"))
    post_url = status.get("url") if is_http_url(status.get("url")) else (
        uri if is_http_url(uri) else None)
    account = as_mapping(status.get("account"))
    acct = _text(account.get("acct"))
    if acct and "@" not in acct and host:
        acct = f"{acct}@{host}"
    flags = (f"{KIND}:sensitive",) if status.get("sensitive") is True else ()
    tags = lower_unique([tag["name"] for tag in _list(status.get("tags"))
                         if isinstance(tag, Mapping) and isinstance(tag.get("name"), str)])
    extra: list[tuple[str, str]] = []
    spoiler = _text(status.get("spoiler_text"))
    if spoiler:
        extra.append(("spoiler_text", spoiler))
    posted_at = status.get("created_at") if isinstance(status.get("created_at"), str) else None
    created_s = parse_iso_timestamp(posted_at)
    where = post_url or uri or str(status.get("id"))

    refs: list[MediaRef] = []
    skipped: list[tuple[str, str]] = []
    waiting = False
    for index, attachment in enumerate(_list(status.get("media_attachments"))):
        if not isinstance(attachment, Mapping):
            skipped.append((f"{where}#media{index}", "mastodon: attachment is not an object"))
            continue
        kind = attachment_kind(attachment)
        url = attachment_url(attachment, kind)
        if url is None:
            if kind == "image" and (created_s is None
                                    or now - created_s < PENDING_MEDIA_WINDOW_S):
                waiting = True  # still being processed: the cursor waits for it
            else:
                reason = f"mastodon: {kind} attachment without a URL"
                skipped.append((f"{where}#media{index}", reason))
                log.info("mastodon_media_without_url", source=source, post_url=post_url,
                         type=kind, reason=reason)
            continue
        skip_reason = SKIP_REASONS.get(kind)
        if skip_reason is not None:
            log.info("mastodon_media_skipped", source=source, post_url=post_url, url=url,
                     type=kind, reason=skip_reason)
        description = _text(attachment.get("description"))
        item_extra = list(extra)
        if description:
            item_extra.append(("description", description[:1000]))
        refs.append(MediaRef(
            url=url, source=source, post_url=post_url, author=acct, flags=flags, tags=tags,
            dedup_key=f"{uri}#media{index}" if uri else None,
            posted_at=posted_at, skip_reason=skip_reason, extra=tuple(item_extra),
        ))
    return _OriginalMedia(refs=refs, waiting=waiting, skipped=skipped)


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
    problems = [f"{key}: unknown key for a mastodon source (known: {', '.join(sorted(KEYS))})"
                for key in settings if key not in KEYS]
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
