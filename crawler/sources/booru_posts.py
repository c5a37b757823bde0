"""Booru API pages read into posts: Danbooru JSON, Gelbooru JSON and XML, Moebooru JSON.

Pure functions (`bytes -> posts -> MediaRef`). A page that is not what its API answers
(not JSON, the wrong shape, unsafe or unreadable XML) is a SourceError naming the URL; one
malformed post inside a good page (a control character, a missing or wrongly typed field,
a bad URL) costs only that post, logged as `source_entry_skipped` with its reason.

Gelbooru-0.2 XML is read by `xmlsafe`: characters XML 1.0 forbids become U+FFFD, and any
DTD or entity declaration is refused (defusedxml). When the page is still not well-formed,
each `<post>` element is parsed on its own, so a broken post loses only itself.

Media URLs are kept whatever their scheme (the pipeline rejects other schemes as
`bad_scheme`); root- and scheme-relative URLs are resolved against `base_url`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

import structlog

from crawler.errors import SourceError
from crawler.sources.common import iso_from_epoch, lower_unique, parse_json
from storage.redact import redact
from crawler.sources.xmlsafe import ParseError, UnsafeXmlError, parse_xml, xml_text
from storage.records import MediaRef

log = structlog.get_logger()

KIND = "booru"
RATINGS = ("g", "s", "q", "e")
DEFAULT_NSFW_RATINGS = ("q", "e")
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif"})
MAX_POST_ID = 2**63 - 1  # SQLite's and every booru's id range

_RATING_WORDS = {"general": "g", "safe": "g", "sensitive": "s", "questionable": "q",
                 "explicit": "e"}
_SCHEME = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*:")
# Where each <post> element starts ("<posts" is the root, not a post).
_POST_START = re.compile(r"<post\b")
_POSTS_ROOT = re.compile(r"<posts\b")
_DECLARATIONS = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
# An HTML page's DOCTYPE is no attack: say what the page is instead of refusing "a DTD".
_HTML_PAGE = re.compile(r"\s*(?:<!--.*?-->\s*)*<!doctype\s+html\b", re.IGNORECASE | re.DOTALL)


def normalize_rating(api: str, raw: object) -> str | None:
    """The g/s/q/e rating of a post as its API spells it, else None."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _RATING_WORDS:
        return _RATING_WORDS[value]
    if value not in RATINGS:
        return None
    if api == "danbooru":
        return value
    # Moebooru and pre-2022 Gelbooru: s is "safe", not Danbooru's "sensitive".
    return "g" if value == "s" else value


@dataclass(frozen=True)
class Post:
    """One post, reduced to what the source needs, whatever API it came from."""

    id: int
    file_url: str | None
    md5: str | None
    rating: str | None
    tags: tuple[str, ...]
    post_url: str
    author: str | None = None
    posted_at: str | None = None
    file_ext: str | None = None
    deleted: bool = False
    extra: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class MalformedEntry:
    """A page entry that could not even be read as fields (a broken XML element)."""

    reason: str


@dataclass(frozen=True)
class PostPage:
    """The posts of one page and the entries it skipped, each as (where, reason)."""

    posts: list[Post]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_posts(body: bytes, *, api: str, base_url: str, source: str = KIND,
                url: str | None = None) -> list[Post]:
    """The posts of one API page (JSON, or XML for Gelbooru-0.2 sites); newest first.

    Raises SourceError (naming `url`, else `base_url`) when the page is unreadable.
    """
    return read_posts(body, api=api, base_url=base_url, source=source, url=url).posts


def read_posts(body: bytes, *, api: str, base_url: str, source: str = KIND,
               url: str | None = None) -> PostPage:
    """`parse_posts` with the skipped entries; each post is read on its own."""
    base = base_url.rstrip("/")
    where = redact(url or base)
    items = _page_items(body, api=api, source=source, where=where)
    reader = {"danbooru": _danbooru_post, "moebooru": _moebooru_post}.get(api, _gelbooru_post)
    posts: list[Post] = []
    skipped: list[tuple[str, str]] = []
    for position, item in enumerate(items):
        post: Post | None = None
        if isinstance(item, MalformedEntry):
            reason = item.reason
        else:
            try:
                post = reader(item, base)
            except Exception as error:  # noqa: BLE001 - a post is the unit of isolation
                reason = f"booru: unreadable post ({type(error).__name__}: {error})"
            else:
                reason = "booru: not a post with a valid id"
        if post is None:
            entry = item.get("id") if isinstance(item, Mapping) else None
            label = f"post {entry}" if isinstance(entry, str | int) else f"post #{position}"
            skipped.append((f"{label} at {where}", reason))
            log.info("source_entry_skipped", source=source, entry=label, url=where,
                     reason=reason)
            continue
        posts.append(post)
    return PostPage(posts=posts, skipped=skipped)


def _page_items(body: bytes, *, api: str, source: str, where: str) -> list[Any]:
    """The raw post entries of a page, by API; SourceError when the page itself is wrong."""
    if api in ("danbooru", "moebooru"):
        data = parse_json(source, body, where)
        if not isinstance(data, list):
            raise SourceError(source, f"expected a JSON array of posts from {where}")
        return data
    # Byte-order marks and UTF-16's NULs aside, does it start like XML?
    probe = body[:1024].replace(b"\x00", b"").lstrip(b"\xef\xbb\xbf\xfe\xff \t\r\n")
    if not body.strip():
        return []  # Gelbooru 0.2 answers an empty body when nothing matches
    if probe.startswith(b"<"):
        return gelbooru_xml(body, source, where)
    data = parse_json(source, body, where)
    if isinstance(data, Mapping):  # Gelbooru 0.2.5: {"@attributes": ..., "post": [...]}
        posts = data.get("post")
        if posts is None:
            return []
        if isinstance(posts, Mapping):
            return [posts]
        if isinstance(posts, list):
            return posts
    elif isinstance(data, list):  # Gelbooru 0.2 JSON (safebooru): a bare array
        return data
    raise SourceError(source, f"unexpected Gelbooru answer from {where}")


def posts_to_refs(posts: list[Post], *, source: str,
                  nsfw_ratings: frozenset[str]) -> list[MediaRef]:
    """MediaRefs for posts: ratings as tags and flags; deleted, hidden and non-images skipped."""
    refs: list[MediaRef] = []
    for post in posts:
        tags = list(post.tags)
        flags: tuple[str, ...] = ()
        if post.rating:
            tags.append(f"rating:{post.rating}")
            if post.rating in nsfw_ratings:
                flags = (f"{KIND}:rating:{post.rating}",)
        ext = (post.file_ext or _extension(post.file_url) or "").lower()
        skip_reason = None
        if post.deleted:
            skip_reason = "booru: deleted post"
        elif not post.file_url:
            skip_reason = "booru: post hidden at this account's level (no file_url)"
        elif ext and ext not in IMAGE_EXTENSIONS:
            skip_reason = f"booru: not an image ({ext})"
        refs.append(MediaRef(
            url=post.file_url or post.post_url, source=source, post_url=post.post_url,
            author=post.author, flags=flags, tags=lower_unique(tags), md5=post.md5,
            posted_at=post.posted_at, skip_reason=skip_reason, extra=post.extra,
        ))
    return refs


def parse_booru(body: bytes, *, api: str, base_url: str, source: str,
                nsfw_ratings: frozenset[str] = frozenset(DEFAULT_NSFW_RATINGS)) -> list[MediaRef]:
    """The media of one API page; SourceError when the page is unreadable."""
    posts = parse_posts(body, api=api, base_url=base_url, source=source)
    return posts_to_refs(posts, source=source, nsfw_ratings=nsfw_ratings)


def _extension(url: str | None) -> str | None:
    if not url:
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1] if "." in name else None


def int_value(value: object) -> int | None:
    """A post id or count: a non-negative int or ASCII digits within 64 bits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            return None
        value = int(text)
    if isinstance(value, int) and 0 <= value <= MAX_POST_ID:
        return value
    return None


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _absolute(url: object, base: str) -> str | None:
    """`url` resolved against the board when relative; any scheme is kept, empty is None."""
    text = _text(url)
    if text is None:
        return None
    if text.startswith("//"):
        return f"{urlsplit(base).scheme}:{text}"
    if text.startswith("/"):
        return f"{base}{text}"
    if not _SCHEME.match(text):
        return f"{base}/{text}"
    return text


def _md5(*values: object) -> str | None:
    text = next((text for value in values if (text := _text(value))), None)
    return text.lower() if text else None


def _split_tags(value: object) -> tuple[str, ...]:
    text = _text(value)
    return tuple(html.unescape(text).split()) if text else ()


def _extra(post_id: int, source_url: object) -> tuple[tuple[str, str], ...]:
    extra = [("booru_id", str(post_id))]
    if (text := _text(source_url)) is not None:
        extra.append(("source_url", text[:1000]))
    return tuple(extra)


def _danbooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := int_value(item.get("id"))) is None:
        return None
    artists = _split_tags(item.get("tag_string_artist"))
    return Post(
        id=post_id, file_url=_absolute(item.get("file_url"), base), md5=_md5(item.get("md5")),
        rating=normalize_rating("danbooru", item.get("rating")),
        tags=_split_tags(item.get("tag_string")), post_url=f"{base}/posts/{post_id}",
        author=" ".join(artists) or None, posted_at=_text(item.get("created_at")),
        file_ext=_text(item.get("file_ext")),
        deleted=item.get("is_deleted") is True,
        extra=_extra(post_id, item.get("source")),
    )


def _epoch_time(value: object) -> str | None:
    """ISO time of an epoch-seconds number, or None when it is not a sane one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return iso_from_epoch(float(value))
    except (OverflowError, ValueError, OSError):
        return None


def _moebooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := int_value(item.get("id"))) is None:
        return None
    return Post(
        id=post_id, file_url=_absolute(item.get("file_url"), base), md5=_md5(item.get("md5")),
        rating=normalize_rating("moebooru", item.get("rating")),
        tags=_split_tags(item.get("tags")), post_url=f"{base}/post/show/{post_id}",
        author=_text(item.get("author")), posted_at=_epoch_time(item.get("created_at")),
        file_ext=_text(item.get("file_ext")),
        deleted=item.get("status") == "deleted",
        extra=_extra(post_id, item.get("source")),
    )


def _gelbooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := int_value(item.get("id"))) is None:
        return None
    file_url = _absolute(item.get("file_url"), base)
    directory, image = _text(item.get("directory")), _text(item.get("image"))
    if file_url is None and directory and image:
        # Gelbooru 0.2 JSON gives the file's place, not its URL.
        file_url = f"{base}/images/{directory}/{image}"
    return Post(
        id=post_id, file_url=file_url, md5=_md5(item.get("md5"), item.get("hash")),
        rating=normalize_rating("gelbooru", item.get("rating")),
        tags=_split_tags(item.get("tags")),
        post_url=f"{base}/index.php?page=post&s=view&id={post_id}",
        author=_text(item.get("owner")), posted_at=_gelbooru_time(item.get("created_at")),
        deleted=item.get("status") == "deleted",
        extra=_extra(post_id, item.get("source")),
    )


def _gelbooru_time(value: object) -> str | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y").isoformat()
    except ValueError:
        return text


def _post_fields(element: Element) -> dict[str, str]:
    """A <post>'s fields: its attributes (Gelbooru 0.2) or its children (0.2.5 XML)."""
    fields = {child.tag: (child.text or "") for child in element if isinstance(child.tag, str)}
    return fields | dict(element.attrib)


def gelbooru_xml(body: bytes, source: str,
                 where: str) -> list[dict[str, str] | MalformedEntry]:
    """Posts from Gelbooru XML. A DTD or entity declaration is refused (SourceError)."""
    text = xml_text(body)
    if _HTML_PAGE.match(text):
        raise SourceError(source, f"{where} answered an HTML page, not the API's XML (a login "
                                  f"wall or a bot challenge?); check base_url and api")
    try:
        root = parse_xml(text)
    except UnsafeXmlError:
        raise SourceError(source, _refusal(where)) from None
    except ParseError as error:
        return _recover_posts(text, source, where, error)
    if root.tag == "response" and root.get("success") == "false":
        raise SourceError(source, f"booru refused the search at {where}: "
                                  f"{root.get('reason') or ''}")
    if root.tag != "posts":
        raise SourceError(source, f"unexpected booru XML root <{root.tag}> from {where}")
    return [_post_fields(element) for element in root if element.tag == "post"]


def _refusal(where: str) -> str:
    return (f"booru XML from {where} declares a DOCTYPE or entities; refused (entity "
            f"expansion and external references are how XML bombs and file reads work); "
            f"check base_url and api")


def _recover_posts(text: str, source: str, where: str,
                   error: ParseError) -> list[dict[str, str] | MalformedEntry]:
    """The well-formed <post> elements of a page that is not well-formed as a whole."""
    root = _POSTS_ROOT.search(text)
    if root is None:
        raise SourceError(source, f"malformed booru XML from {where}: {error}")
    if _DECLARATIONS.search(text, 0, root.start()):
        raise SourceError(source, _refusal(where))
    end = text.rfind("</posts")
    body = text[root.end():end if end > root.end() else len(text)]
    # Each post runs to where the next begins: linear, whatever a broken post contains.
    starts = [match.start() for match in _POST_START.finditer(body)]
    if not starts:
        raise SourceError(source, f"malformed booru XML from {where}: {error}")
    entries: list[dict[str, str] | MalformedEntry] = []
    for start, stop in zip(starts, [*starts[1:], len(body)], strict=True):
        try:
            entries.append(_post_fields(parse_xml(body[start:stop].strip())))
        except (ParseError, UnsafeXmlError) as post_error:
            entries.append(MalformedEntry(f"booru: malformed <post> element ({post_error})"))
    read = sum(not isinstance(entry, MalformedEntry) for entry in entries)
    if not read:
        raise SourceError(source, f"malformed booru XML from {where}: {error}")
    log.warning("booru_xml_recovered", source=source, url=where, error=str(error),
                posts=read, lost=len(entries) - read)
    return entries
