"""Danbooru-style image boards: Danbooru, Gelbooru (0.2 and 0.2.5) and Moebooru.

Keys: `base_url`, `tags` (a search, e.g. "glasses" or ["glasses", "1girl"]), `api` =
"danbooru" (default) | "gelbooru" | "moebooru"; optional `login` + `api_key` (Danbooru: sent
as HTTP Basic auth; Moebooru: `login` + `password_hash`), `api_key` + `user_id` (Gelbooru,
which now requires them), `limit` (posts per page, at most 200; 100 on Gelbooru and
Moebooru), `backfill` (default 200: how many of the newest posts the first poll takes) and
`nsfw_ratings` (default ["q", "e"]; add "s" to treat "sensitive" as NSFW).

Paging is by post id so that nothing is missed or repeated:
- Danbooru: `page=a<highest id seen>` returns the posts just after that id; it is repeated
  while pages come back full. The first poll pages down from the top with `page=b<id>`.
- Gelbooru and Moebooru have no "after" page, so a sweep reads newest-first with the id
  bounds in the search itself (`id:>after id:<lowest read so far`; one `id:A..B` range on
  Moebooru): keyset paging, which new posts arriving mid-sweep cannot shift. A board that
  ignores the bounds is reported rather than silently skipped past. A sweep cut short by the per-poll page cap goes on
  at the next poll from where it stopped.

Ratings are normalised to g/s/q/e: Danbooru's letters as they are; Gelbooru's words
(general, sensitive, questionable, explicit; and the old "safe" / "s" meaning general);
Moebooru's s (safe) as g. Each post gets the tag "rating:<r>", and the flag
"booru:rating:<r>" when r is in `nsfw_ratings`. Gelbooru-0.2 sites such as safebooru.org
answer XML (or a bare JSON array); XML with a DOCTYPE or entity declaration is refused.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

from crawler.errors import SourceError
from crawler.sources.base import Document, HttpClient, PollResult, Source, SourceContext
from crawler.sources.common import (
    document_cap,
    dump_cursor,
    is_http_url,
    iso_from_epoch,
    load_cursor,
    lower_unique,
    parse_json,
    raise_for_status,
)
from storage.records import MediaRef
from storage.redact import redact, remember_secret

if TYPE_CHECKING:
    from crawler.config import SourceConfig

KIND = "booru"
APIS = ("danbooru", "gelbooru", "moebooru")
KEYS = frozenset({"base_url", "tags", "api", "login", "api_key", "user_id", "limit",
                  "backfill", "nsfw_ratings"})
RATINGS = ("g", "s", "q", "e")
DEFAULT_NSFW_RATINGS = ("q", "e")
MAX_LIMIT = {"danbooru": 200, "gelbooru": 100, "moebooru": 100}
DEFAULT_LIMIT = 100
DEFAULT_BACKFILL = 200
MAX_BACKFILL = 5000
MAX_PAGES_PER_POLL = 10
MAX_BACKFILL_PAGES = 50
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif"})
THROTTLED = {"danbooru": frozenset({429}), "gelbooru": frozenset({429}),
             "moebooru": frozenset({421, 429})}

_RATING_WORDS = {"general": "g", "safe": "g", "sensitive": "s", "questionable": "q",
                 "explicit": "e"}


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


def parse_posts(body: bytes, *, api: str, base_url: str, source: str = KIND) -> list[Post]:
    """The posts of one API page (JSON, or XML for Gelbooru-0.2 sites); newest first."""
    base = base_url.rstrip("/")
    if api == "danbooru":
        data = parse_json(source, body)
        if not isinstance(data, list):
            raise SourceError(source, f"expected a JSON array of posts from {base}")
        return [post for item in data if (post := _danbooru_post(item, base))]
    if api == "moebooru":
        data = parse_json(source, body)
        if not isinstance(data, list):
            raise SourceError(source, f"expected a JSON array of posts from {base}")
        return [post for item in data if (post := _moebooru_post(item, base))]
    # Byte-order marks and UTF-16's NULs aside, does it start like XML?
    probe = body[:1024].replace(b"\x00", b"").lstrip(b"\xef\xbb\xbf\xfe\xff \t\r\n")
    if not body.strip():
        return []  # Gelbooru 0.2 answers an empty body when nothing matches
    items: list[Any]
    if probe.startswith(b"<"):
        items = list(_gelbooru_xml(body, source))
    else:
        data = parse_json(source, body)
        if isinstance(data, Mapping):  # Gelbooru 0.2.5: {"@attributes": ..., "post": [...]}
            posts = data.get("post") or []
            items = [posts] if isinstance(posts, Mapping) else list(posts)
        elif isinstance(data, list):  # Gelbooru 0.2 JSON (safebooru): a bare array
            items = data
        else:
            raise SourceError(source, f"unexpected Gelbooru answer from {base}")
    return [post for item in items if (post := _gelbooru_post(item, base))]


def posts_to_refs(posts: list[Post], *, source: str, nsfw_ratings: frozenset[str]) -> list[MediaRef]:
    """MediaRefs for posts: ratings as tags and flags; hidden, deleted and videos skipped."""
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
        elif not post.file_url or not post.md5:
            skip_reason = "booru: post hidden at this account's level (no file_url/md5)"
        elif ext and ext not in IMAGE_EXTENSIONS:
            skip_reason = f"booru: not an image ({ext})"
        url = post.file_url if post.file_url else post.post_url
        refs.append(MediaRef(
            url=url, source=source, post_url=post.post_url, author=post.author, flags=flags,
            tags=lower_unique(tags), md5=post.md5, posted_at=post.posted_at,
            skip_reason=skip_reason, extra=post.extra,
        ))
    return refs


def parse_booru(body: bytes, *, api: str, base_url: str, source: str,
                nsfw_ratings: frozenset[str] = frozenset(DEFAULT_NSFW_RATINGS)) -> list[MediaRef]:
    """The media of one API page."""
    posts = parse_posts(body, api=api, base_url=base_url, source=source)
    return posts_to_refs(posts, source=source, nsfw_ratings=nsfw_ratings)


def _extension(url: str | None) -> str | None:
    if not url:
        return None
    path = urlsplit(url).path
    return path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _absolute(url: object, base: str) -> str | None:
    text = _text(url)
    if text is None:
        return None
    if text.startswith("//"):
        text = f"{urlsplit(base).scheme}:{text}"
    elif text.startswith("/"):
        text = f"{base}{text}"
    return text if is_http_url(text) else None


def _split_tags(value: object) -> tuple[str, ...]:
    text = _text(value)
    return tuple(html.unescape(text).split()) if text else ()


def _extra(post_id: int, source_url: object) -> tuple[tuple[str, str], ...]:
    extra = [("booru_id", str(post_id))]
    if (text := _text(source_url)) is not None:
        extra.append(("source_url", text[:1000]))
    return tuple(extra)


def _danbooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := _int(item.get("id"))) is None:
        return None
    artists = _split_tags(item.get("tag_string_artist"))
    return Post(
        id=post_id, file_url=_absolute(item.get("file_url"), base),
        md5=(_text(item.get("md5")) or "").lower() or None,
        rating=normalize_rating("danbooru", item.get("rating")),
        tags=_split_tags(item.get("tag_string")), post_url=f"{base}/posts/{post_id}",
        author=" ".join(artists) or None, posted_at=_text(item.get("created_at")),
        file_ext=_text(item.get("file_ext")),
        deleted=item.get("is_deleted") is True,
        extra=_extra(post_id, item.get("source")),
    )


def _moebooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := _int(item.get("id"))) is None:
        return None
    created = item.get("created_at")
    posted_at = iso_from_epoch(float(created)) if isinstance(created, int | float) and not \
        isinstance(created, bool) else None
    return Post(
        id=post_id, file_url=_absolute(item.get("file_url"), base),
        md5=(_text(item.get("md5")) or "").lower() or None,
        rating=normalize_rating("moebooru", item.get("rating")),
        tags=_split_tags(item.get("tags")), post_url=f"{base}/post/show/{post_id}",
        author=_text(item.get("author")), posted_at=posted_at,
        file_ext=_text(item.get("file_ext")),
        deleted=item.get("status") == "deleted",
        extra=_extra(post_id, item.get("source")),
    )


def _gelbooru_post(item: object, base: str) -> Post | None:
    if not isinstance(item, Mapping) or (post_id := _int(item.get("id"))) is None:
        return None
    file_url = _absolute(item.get("file_url"), base)
    md5 = _text(item.get("md5")) or _text(item.get("hash"))
    if file_url is None and _text(item.get("directory")) and _text(item.get("image")):
        # Gelbooru 0.2 JSON gives the file's place, not its URL.
        file_url = _absolute(f"/images/{item['directory']}/{item['image']}", base)
    return Post(
        id=post_id, file_url=file_url, md5=md5.lower() if md5 else None,
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


def _gelbooru_xml(body: bytes, source: str) -> list[dict[str, str]]:
    """Posts from Gelbooru-0.2 XML; any DTD is refused (no entity can be declared)."""
    plain = body.replace(b"\x00", b"")
    if b"<!DOCTYPE" in plain or b"<!ENTITY" in plain:
        raise SourceError(source, "booru XML declares a DOCTYPE or entities; refused")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise SourceError(source, f"malformed booru XML: {error}") from None
    if root.tag == "response" and root.get("success") == "false":
        raise SourceError(source, f"booru refused the search: {root.get('reason') or ''}")
    if root.tag != "posts":
        raise SourceError(source, f"unexpected booru XML root <{root.tag}>")
    return [dict(element.attrib) for element in root if element.tag == "post"]


def id_bounds(api: str, after: int | None, below: int | None) -> list[str]:
    """Search terms keeping ids strictly between `after` and `below` (either may be open).

    Moebooru keeps only the last `id:` term of a search, so both bounds go in one range
    (`id:A..B`, inclusive); Gelbooru combines separate `id:>` and `id:<` terms.
    """
    if after is not None and below is not None:
        if api == "moebooru":
            return [f"id:{after + 1}..{below - 1}"]
        return [f"id:>{after}", f"id:<{below}"]
    if after is not None:
        return [f"id:>{after}"]
    if below is not None:
        return [f"id:<{below}"]
    return []


class BooruSource:
    """A tag search on one booru, polled by post id."""

    kind = KIND

    def __init__(self, name: str, *, base_url: str, tags: str, api: str, http: HttpClient,
                 user_agent: str, login: str | None = None, api_key: str | None = None,
                 user_id: str | None = None, limit: int = DEFAULT_LIMIT,
                 backfill: int = DEFAULT_BACKFILL,
                 nsfw_ratings: frozenset[str] = frozenset(DEFAULT_NSFW_RATINGS),
                 max_bytes: int | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.tags = tags
        self.api = api
        self.limit = min(limit, MAX_LIMIT[api])
        self.backfill = backfill
        self.nsfw_ratings = nsfw_ratings
        self._http = http
        self._user_agent = user_agent
        self._login = login
        self._api_key = api_key
        self._user_id = user_id
        self._max_bytes = max_bytes
        if api == "danbooru" and login and api_key:
            remember_secret(self._basic_token())  # sent as a header, masked if echoed

    def _basic_token(self) -> str:
        return base64.b64encode(f"{self._login}:{self._api_key}".encode()).decode()

    def __repr__(self) -> str:  # never show credentials
        return f"BooruSource(name={self.name!r}, api={self.api!r}, tags={self.tags!r})"

    def query_key(self) -> str:
        return dump_cursor({"kind": KIND, "api": self.api, "base_url": self.base_url,
                            "tags": self.tags})

    async def poll(self, cursor: str | None, now: float) -> PollResult:
        """Read the posts newer than the cursor (the first poll: the newest `backfill`)."""
        state = load_cursor(cursor)
        if self.api == "danbooru":
            posts, state, full = await self._poll_danbooru(state, now)
        else:
            posts, state, full = await self._poll_sweep(state, now)
        refs = posts_to_refs(posts, source=self.name, nsfw_ratings=self.nsfw_ratings)
        return PollResult(refs=tuple(refs), cursor=dump_cursor(state), full=full)

    async def _poll_danbooru(self, state: dict[str, Any],
                             now: float) -> tuple[list[Post], dict[str, Any], bool]:
        after = _int(state.get("after"))
        posts: list[Post] = []
        if after is None:
            wanted = max(1, min(self.limit, self.backfill))
            page = await self._page(now, limit=wanted)
            if not self.backfill:
                # Start from "now": remember the newest id, yield nothing.
                top = max((post.id for post in page), default=None)
                return [], ({"after": top} if top is not None else {}), False
            posts.extend(page)
            for _ in range(MAX_BACKFILL_PAGES):
                if not page or len(page) < wanted or len(posts) >= self.backfill:
                    break
                wanted = min(self.limit, self.backfill - len(posts))
                page = await self._page(now, page=f"b{min(post.id for post in page)}",
                                        limit=wanted)
                posts.extend(page)
            top = max((post.id for post in posts), default=None)
            return posts, ({"after": top} if top is not None else {}), False
        for _ in range(MAX_PAGES_PER_POLL):
            page = await self._page(now, page=f"a{after}")
            newer = [post for post in page if post.id > after]
            posts.extend(newer)
            if not newer:
                return posts, {"after": after}, False
            after = max(post.id for post in newer)
            if len(page) < self.limit:
                return posts, {"after": after}, False
        return posts, {"after": after}, True

    async def _poll_sweep(self, state: dict[str, Any],
                          now: float) -> tuple[list[Post], dict[str, Any], bool]:
        after = _int(state.get("after"))
        below = _int(state.get("below"))
        top = _int(state.get("top"))
        taken = _int(state.get("taken")) or 0
        backfilling = after is None
        posts: list[Post] = []
        for _ in range(MAX_PAGES_PER_POLL):
            wanted = self.limit if not backfilling else max(1, min(self.limit,
                                                                   self.backfill - taken))
            page = await self._page(now, bounds=id_bounds(self.api, after, below),
                                    limit=wanted)
            fresh = [post for post in page if (after is None or post.id > after)
                     and (below is None or post.id < below)]
            if page and not fresh and len(page) >= wanted:
                # A full page with nothing inside the bounds: the board ignored them, and
                # going on would silently skip posts.
                raise SourceError(self.name, f"{self.base_url} ignores id:<N / id:>N in "
                                             f"searches; this board cannot be polled as "
                                             f"api = {self.api!r}")
            if backfilling and not self.backfill:
                fresh_top = max((post.id for post in page), default=None)
                return [], ({"after": fresh_top} if fresh_top is not None else {}), False
            posts.extend(fresh)
            taken += len(fresh)
            if fresh:
                below = min(post.id for post in fresh)
                top = max([post.id for post in fresh] + ([top] if top is not None else []))
            done = (len(page) < wanted or not fresh
                    or (backfilling and taken >= self.backfill))
            if done:
                new_after = top if top is not None else after
                return posts, ({"after": new_after} if new_after is not None else {}), False
        sweep: dict[str, Any] = {"below": below, "top": top}
        if after is not None:
            sweep["after"] = after
        else:
            sweep["taken"] = taken
        return posts, sweep, True

    async def _page(self, now: float, *, page: str | None = None, limit: int | None = None,
                    bounds: list[str] | None = None) -> list[Post]:
        url, headers = self._request(page=page, limit=limit or self.limit, bounds=bounds or [])
        document = await self._http.get_document(url, headers=headers, max_bytes=self._max_bytes)
        self._check(document, now)
        return parse_posts(document.body, api=self.api, base_url=self.base_url, source=self.name)

    def _check(self, document: Document, now: float) -> None:
        if document.status in (401, 403):
            raise SourceError(self.name, f"HTTP {document.status} from "
                                         f"{redact(document.url)}: check login/api_key "
                                         f"(and user_id on Gelbooru)")
        raise_for_status(self.name, document, now, throttled=THROTTLED[self.api])

    def _request(self, *, page: str | None, limit: int,
                 bounds: list[str]) -> tuple[str, dict[str, str]]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        search = " ".join([self.tags, *bounds]).strip()
        if self.api == "danbooru":
            params = {"tags": search, "limit": str(limit)}
            if page:
                params["page"] = page
            if self._login and self._api_key:
                headers["Authorization"] = f"Basic {self._basic_token()}"
            return f"{self.base_url}/posts.json?{urlencode(params)}", headers
        if self.api == "moebooru":
            params = {"tags": search, "limit": str(limit), "page": "1"}
            if self._login and self._api_key:
                params |= {"login": self._login, "password_hash": self._api_key}
            return f"{self.base_url}/post.json?{urlencode(params)}", headers
        params = {"page": "dapi", "s": "post", "q": "index", "json": "1", "tags": search,
                  "limit": str(limit), "pid": "0"}
        if self._api_key and self._user_id:
            params |= {"api_key": self._api_key, "user_id": self._user_id}
        headers["Accept"] = "application/json, application/xml;q=0.9"
        return f"{self.base_url}/index.php?{urlencode(params)}", headers


def _tags(value: object) -> str | None:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " ".join(" ".join(value).split())
    return None


def validate(settings: Mapping[str, Any]) -> list[str]:
    """Problems with a booru source's keys."""
    problems = [f"{key}: unknown key for a booru source (known: {', '.join(sorted(KEYS))})"
                for key in settings if key not in KEYS]
    base_url = settings.get("base_url")
    if base_url is None:
        problems.append("base_url: required; the board's address, e.g. \"https://safebooru.org\"")
    elif not is_http_url(base_url):
        problems.append(f"base_url: must be an http(s) URL, got {base_url!r}")
    if "tags" not in settings:
        problems.append("tags: required; a search such as \"glasses\" (or \"\" for every post)")
    elif (search := _tags(settings["tags"])) is None:
        problems.append("tags: must be a string of tags or a list of tags")
    elif any(term.lower().startswith(("order:", "sort:", "id:")) for term in search.split()):
        problems.append("tags: leave out order:, sort: and id: terms; the source pages by "
                        "post id itself")
    api = settings.get("api", "danbooru")
    if api not in APIS:
        problems.append(f"api: must be one of {', '.join(APIS)}, got {api!r}")
        api = "danbooru"
    for key in ("login", "api_key"):
        if key in settings and (not isinstance(settings[key], str) or not settings[key]):
            problems.append(f"{key}: must be a non-empty string")
    if "user_id" in settings and _int(settings["user_id"]) is None:
        problems.append("user_id: must be your numeric Gelbooru user id")
    if api == "gelbooru" and ("api_key" in settings) != ("user_id" in settings):
        problems.append("user_id: Gelbooru needs both api_key and user_id "
                        "(from your account options page)")
    elif api != "gelbooru" and ("login" in settings) != ("api_key" in settings):
        problems.append("api_key: give both login and api_key, or neither")
    if "limit" in settings:
        limit = settings["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            problems.append("limit: must be a whole number from 1 to 200")
    if "backfill" in settings:
        backfill = settings["backfill"]
        if isinstance(backfill, bool) or not isinstance(backfill, int) or not (
                0 <= backfill <= MAX_BACKFILL):
            problems.append(f"backfill: must be a whole number from 0 to {MAX_BACKFILL}")
    if "nsfw_ratings" in settings:
        ratings = settings["nsfw_ratings"]
        if not isinstance(ratings, list) or not all(item in RATINGS for item in ratings):
            problems.append("nsfw_ratings: must be a list drawn from \"g\", \"s\", \"q\", \"e\"")
    return problems


def create(config: SourceConfig, context: SourceContext) -> Source:
    """Build a BooruSource from a validated `[[sources]]` table."""
    settings = config.settings
    ratings = set(settings.get("nsfw_ratings", DEFAULT_NSFW_RATINGS))
    if context.settings.get("safe_rating_is_nsfw"):
        ratings.add("s")
    user_id = settings.get("user_id")
    return BooruSource(
        config.name, base_url=str(settings["base_url"]), tags=_tags(settings["tags"]) or "",
        api=str(settings.get("api", "danbooru")), http=context.http,
        user_agent=context.user_agent, login=settings.get("login"),
        api_key=settings.get("api_key"), user_id=str(user_id) if user_id is not None else None,
        limit=int(settings.get("limit", DEFAULT_LIMIT)),
        backfill=int(settings.get("backfill", DEFAULT_BACKFILL)),
        nsfw_ratings=frozenset(ratings),
        max_bytes=document_cap(context),
    )
