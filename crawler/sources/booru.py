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
  ignores the bounds is reported rather than silently skipped past. A sweep cut short by the
  per-poll page cap goes on at the next poll from where it stopped.

Ratings are normalised to g/s/q/e: Danbooru's letters as they are; Gelbooru's words
(general, sensitive, questionable, explicit; and the old "safe" / "s" meaning general);
Moebooru's s (safe) as g. Each post gets the tag "rating:<r>", and the flag
"booru:rating:<r>" when r is in `nsfw_ratings`. Gelbooru-0.2 sites such as safebooru.org
answer XML (or a bare JSON array). Pages are read by `booru_posts`: one malformed post costs
only that post, and XML declaring a DOCTYPE or entities is refused.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from crawler.errors import SourceError
from crawler.sources.base import Document, HttpClient, PollResult, Source, SourceContext
from crawler.sources.booru_posts import (
    DEFAULT_NSFW_RATINGS,
    IMAGE_EXTENSIONS,
    KIND,
    RATINGS,
    Post,
    int_value,
    normalize_rating,
    parse_booru,
    parse_posts,
    posts_to_refs,
    read_posts,
)
from crawler.sources.common import (
    document_cap,
    dump_cursor,
    is_http_url,
    load_cursor,
    raise_for_status,
)
from storage.redact import redact, remember_secret

if TYPE_CHECKING:
    from crawler.config import SourceConfig

__all__ = ["IMAGE_EXTENSIONS", "BooruSource", "Post", "create", "id_bounds",
           "normalize_rating", "parse_booru", "parse_posts", "posts_to_refs", "validate"]

APIS = ("danbooru", "gelbooru", "moebooru")
KEYS = frozenset({"base_url", "tags", "api", "login", "api_key", "user_id", "limit",
                  "backfill", "nsfw_ratings"})
MAX_LIMIT = {"danbooru": 200, "gelbooru": 100, "moebooru": 100}
DEFAULT_LIMIT = 100
DEFAULT_BACKFILL = 200
MAX_BACKFILL = 5000
MAX_PAGES_PER_POLL = 10
MAX_BACKFILL_PAGES = 50
THROTTLED = {"danbooru": frozenset({429}), "gelbooru": frozenset({429}),
             "moebooru": frozenset({421, 429})}


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
        self._skipped: list[tuple[str, str]] = []  # entries the current poll skipped
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
        self._skipped = []
        if self.api == "danbooru":
            posts, state, full = await self._poll_danbooru(state, now)
        else:
            posts, state, full = await self._poll_sweep(state, now)
        refs = posts_to_refs(posts, source=self.name, nsfw_ratings=self.nsfw_ratings)
        return PollResult(refs=tuple(refs), cursor=dump_cursor(state), full=full,
                          skipped=tuple(self._skipped))

    async def _poll_danbooru(self, state: dict[str, Any],
                             now: float) -> tuple[list[Post], dict[str, Any], bool]:
        after = int_value(state.get("after"))
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
        after = int_value(state.get("after"))
        below = int_value(state.get("below"))
        top = int_value(state.get("top"))
        taken = int_value(state.get("taken")) or 0
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
        read = read_posts(document.body, api=self.api, base_url=self.base_url,
                          source=self.name, url=document.url)
        self._skipped.extend(read.skipped)
        return read.posts

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
    from crawler.config_checks import unknown_source_keys

    problems = unknown_source_keys("a booru source", settings, KEYS)
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
    if "user_id" in settings and int_value(settings["user_id"]) is None:
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
