"""Mastodon timeline pages read into media: statuses, reblogs and their attachments.

Pure functions (`bytes -> MediaRef`). A page that is not a JSON array is a SourceError; a
malformed status or attachment inside it costs only itself (logged with its reason).

Attachments: an `image` is read from `url`; `video`, `gifv` and `audio` are yielded with a
skip reason; `unknown` (a remote file the server has not fetched yet), a missing type or a
type this version does not know is read from `remote_url` (then `url`) and the file's magic
bytes decide. An attachment without any URL costs only itself (an image still being
processed holds the cursor back for a while). No URL is dropped for its scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from crawler.errors import SourceError
from crawler.sources.common import (
    as_mapping,
    is_http_url,
    lower_unique,
    parse_iso_timestamp,
    parse_json,
)
from storage.records import MediaRef

log = structlog.get_logger()

KIND = "mastodon"
# An attachment without a URL is usually still being processed; wait this long for it.
PENDING_MEDIA_WINDOW_S = 3600.0
# Known non-image attachment types, yielded with these reasons (recorded as rejected).
SKIP_REASONS = {
    "video": "mastodon: video attachment",
    "gifv": "mastodon: gifv attachment (an MP4 video)",
    "audio": "mastodon: audio attachment",
}


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
    recorded in `skipped`, and the page goes on. A status without media (text-only) is
    counted in `skipped` too, so a poll's summary accounts for every status it read.
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
        without_media = _without_media_reason(original)
        if without_media is not None:
            skipped.append((status_id, without_media))
            continue
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


def _without_media_reason(status: Mapping[str, Any]) -> str | None:
    """Why a status has nothing to fetch (text-only, or attachments that are not a list).

    A status without the `media_attachments` key at all is an id-only placeholder (the
    start-from-now poll of `backfill = 0`), not a status that was read: None for it.
    """
    if "media_attachments" not in status:
        return None
    attachments = status["media_attachments"]
    if not isinstance(attachments, list):
        return "mastodon: media_attachments is not a list"
    return "mastodon: text-only status (no media attachments)" if not attachments else None


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
