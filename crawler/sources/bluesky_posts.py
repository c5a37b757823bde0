"""Bluesky feed pages read into media: post views, embeds, labels and hashtags.

Pure functions (`bytes -> MediaRef`). A page that is not a feed object is a SourceError; a
malformed item inside it costs only that item (logged as `source_entry_skipped`).

NSFW signals are the labels of `NSFW_LABELS` on the post, on the author's account, or
self-applied in the record. Among one subject's labels, a negation (`neg`) removes an earlier
label with the same value from the same labeler, and a label whose `exp` has passed does not
count. Media URLs are kept whatever their scheme (the pipeline rejects other schemes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import structlog

from crawler.errors import SourceError
from crawler.sources.common import as_mapping, lower_unique, parse_iso_timestamp, parse_json
from storage.records import MediaRef

log = structlog.get_logger()

KIND = "bluesky"
# The labels that mark a post as NSFW, with what they mean. Each one present becomes the flag
# "bluesky:label:<value>", which quarantines with trust_source_flags. Values are those of
# Bluesky's moderation service (did:plc:ar7c4by46qjdydhdevvrndac) and of self-labels; other
# labelers that reuse these values count too.
NSFW_LABELS: Mapping[str, str] = MappingProxyType({
    "porn": "sexually explicit (adult)",
    "sexual": "sexually suggestive (adult)",
    "sexual-figurative": "sexually suggestive drawn or cartoon art (adult)",
    "nudity": "non-sexual nudity",
    "graphic-media": "violence, blood or gore",
    "gore": "older name of graphic-media",
    "nsfw": "older self-label for adult content",
})


@dataclass(frozen=True)
class FeedPage:
    """One page of a feed: its items' post URIs (in order), repost markers, media, cursor."""

    uris: list[str]
    reposts: list[bool]
    refs_by_uri: dict[str, list[MediaRef]]
    cursor: str | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_feed(body: bytes, *, source: str, now: float) -> list[MediaRef]:
    """The media of one feed page (getAuthorFeed / getFeed / getListFeed JSON).

    Raises SourceError when the body is not a feed object; a malformed item inside it costs
    only that item (logged with its reason).
    """
    page = read_page(body, source=source, now=now)
    return [ref for uri in dict.fromkeys(page.uris) for ref in page.refs_by_uri[uri]]


def read_page(body: bytes, *, source: str, now: float) -> FeedPage:
    """Decode a feed page into post URIs and their media refs; each item is isolated."""
    data = parse_json(source, body)
    if not isinstance(data, Mapping) or not isinstance(data.get("feed"), list):
        raise SourceError(source, "expected a feed object with a \"feed\" array")
    uris: list[str] = []
    reposts: list[bool] = []
    refs_by_uri: dict[str, list[MediaRef]] = {}
    skipped: list[tuple[str, str]] = []
    for position, item in enumerate(data["feed"]):
        post = item.get("post") if isinstance(item, Mapping) else None
        if not isinstance(post, Mapping) or not _text(post.get("uri")):
            reason = "bluesky: feed item without a post uri"
            skipped.append((f"item #{position}", reason))
            log.info("source_entry_skipped", source=source, entry=position, reason=reason)
            continue
        uri = post["uri"]
        if uri not in refs_by_uri:
            try:
                refs_by_uri[uri] = post_media(post, source=source, now=now)
            except Exception as error:  # noqa: BLE001 - a post is the unit of isolation
                reason = f"bluesky: unreadable post ({type(error).__name__}: {error})"
                skipped.append((uri, reason))
                log.warning("source_entry_failed", source=source, entry=uri, reason=reason)
                refs_by_uri[uri] = []
        reason_field = item.get("reason")
        uris.append(uri)
        reposts.append(isinstance(reason_field, Mapping)
                       and "reasonRepost" in str(reason_field.get("$type") or ""))
    cursor = data.get("cursor") if isinstance(data.get("cursor"), str) else None
    return FeedPage(uris=uris, reposts=reposts, refs_by_uri=refs_by_uri,
                    cursor=cursor or None, skipped=skipped)


def post_media(post: Mapping[str, Any], *, source: str, now: float) -> list[MediaRef]:
    """The media of one post view, with its labels as flags and its hashtags as tags."""
    uri = str(post.get("uri"))
    author = as_mapping(post.get("author"))
    record = as_mapping(post.get("record"))
    handle = _text(author.get("handle"))
    did = _text(author.get("did"))
    rkey = uri.rsplit("/", 1)[-1]
    profile = handle if handle and handle != "handle.invalid" else did
    post_url = f"https://bsky.app/profile/{profile}/post/{rkey}" if profile else None
    flags = nsfw_flags(post, now)
    tags = lower_unique(list(_hashtags(record)))
    posted_at = record.get("createdAt") if isinstance(record.get("createdAt"), str) else (
        post.get("indexedAt") if isinstance(post.get("indexedAt"), str) else None)
    refs: list[MediaRef] = []
    for index, (url, alt, skip_reason) in enumerate(_embed_media(post.get("embed"))):
        extra = (("description", alt[:1000]),) if alt else ()
        refs.append(MediaRef(
            url=url, source=source, post_url=post_url, author=handle or did, flags=flags,
            tags=tags, dedup_key=f"{uri}#media{index}", posted_at=posted_at,
            skip_reason=skip_reason, extra=extra,
        ))
    return refs


def nsfw_flags(post: Mapping[str, Any], now: float) -> tuple[str, ...]:
    """The NSFW flags of a post view: its labels, its author's labels and its self-labels."""
    author = as_mapping(post.get("author"))
    values = (active_labels(_list(post.get("labels")), now)
              | active_labels(_list(author.get("labels")), now)
              | self_labels(as_mapping(post.get("record"))))
    return tuple(f"{KIND}:label:{value}" for value in sorted(values) if value in NSFW_LABELS)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def active_labels(labels: Iterable[Any], now: float) -> set[str]:
    """Label values in force among one subject's labels.

    A label whose `exp` is past does not count. A negation (`neg: true`) removes an earlier
    label with the same value from the same labeler (`src`); a label applied again after its
    negation is in force again. Labels are taken in creation order (`cts`) when each has one,
    else in the order given.
    """
    decoded: list[tuple[float | None, tuple[str, str], bool]] = []
    for label in labels:
        if not isinstance(label, Mapping) or not _text(label.get("val")):
            continue
        expires = parse_iso_timestamp(label.get("exp"))
        if expires is not None and expires <= now:
            continue
        key = (str(label.get("src") or ""), str(label["val"]).strip().lower())
        decoded.append((parse_iso_timestamp(label.get("cts")), key, label.get("neg") is True))
    if all(created is not None for created, _, _ in decoded):
        decoded.sort(key=lambda entry: entry[0] or 0.0)  # stable: ties keep their order
    in_force: dict[tuple[str, str], bool] = {}
    for _, key, negation in decoded:
        in_force[key] = not negation
    return {value for (_, value), applied in in_force.items() if applied}


def self_labels(record: Mapping[str, Any]) -> set[str]:
    """Values of the self-labels in a post record (com.atproto.label.defs#selfLabels)."""
    labels = as_mapping(record.get("labels"))
    kind = labels.get("$type")
    if kind is not None and "selfLabels" not in str(kind):
        return set()
    return {text.lower() for value in _list(labels.get("values"))
            if isinstance(value, Mapping) and (text := _text(value.get("val")))}


def _hashtags(record: Mapping[str, Any]) -> Iterable[str]:
    for facet in _list(record.get("facets")):
        if not isinstance(facet, Mapping):
            continue
        for feature in _list(facet.get("features")):
            if (isinstance(feature, Mapping)
                    and feature.get("$type") == "app.bsky.richtext.facet#tag"
                    and isinstance(feature.get("tag"), str)):
                yield feature["tag"].lstrip("#")
    tags = record.get("tags")
    yield from ([tags] if isinstance(tags, str) else
                [tag for tag in _list(tags) if isinstance(tag, str)])


def _embed_media(embed: object) -> list[tuple[str, str, str | None]]:
    """(url, alt, skip_reason) for each media item of an embed view."""
    if not isinstance(embed, Mapping):
        return []
    kind = str(embed.get("$type") or "")
    if kind.startswith("app.bsky.embed.recordWithMedia"):
        return _embed_media(embed.get("media"))
    if kind.startswith("app.bsky.embed.images"):
        items = _list(embed.get("images"))
    elif kind.startswith("app.bsky.embed.gallery"):
        items = _list(embed.get("items"))
    elif kind.startswith("app.bsky.embed.video"):
        playlist = _text(embed.get("playlist"))
        return [(playlist, "", "bluesky: video")] if playlist else []
    else:
        return []
    media: list[tuple[str, str, str | None]] = []
    for image in items:
        # Only a missing URL drops an image; another scheme is recorded downstream.
        if isinstance(image, Mapping) and (url := _text(image.get("fullsize"))):
            alt = _text(image.get("alt")) or ""
            media.append((url, alt, None))
    return media
