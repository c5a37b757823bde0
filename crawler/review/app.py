"""The review web application: routes and handlers (aiohttp.web).

Routes (all behind `security`: Host check, token/session, CSRF on POST):

    GET  /                      -> 303 /quarantine
    GET  /quarantine, /held     the queues (blurred), filters ?tag=&min=&max=&source=&page=;
                                /quarantine lists the images no reviewer decided yet
    GET  /quarantine/confirmed  quarantined images a reviewer confirmed (a tag labelled yes)
    GET  /library               tags with counts, and the library filtered the same way
    GET  /item/<sha256>         one image: scores, labels (with history), sources, actions
    GET  /image/<sha256>        the full image, Content-Type from its magic bytes
    GET  /thumb/<sha256>        a blurred JPEG thumbnail
    GET  /leave?url=URL         the interstitial before a site a feed named
    GET  /static/review.js|css  the script and stylesheet
    GET, POST /login            the sign-in form; POST /logout signs out
    POST /item/<sha256>/release | confirm | label (label=TAG=yes|no ...) | delete

Images are addressed by a full lowercase sha256 only: any other path segment never
matches a route (404), and the file is found from the catalogue, never from the URL.
A POST answers 303 to its `next` field (a local path), or JSON when asked with
`Accept: application/json`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from classifier.decode import SNIFF_BYTES, sniff_format
from classifier.sniff import MEDIA_TYPES
from crawler.config import Config
from crawler.review import actions, pages, queries, security
from crawler.review.actions import REVIEW_UI, ReviewContext
from crawler.review.static import REVIEW_CSS, REVIEW_JS
from storage.catalogue import Catalogue
from storage.contact_sheet import cached_thumbnail_path, write_thumbnail
from storage.placement import DataLayout

SHA = "{sha:[0-9a-f]{64}}"
TAG_PATTERN = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,39}$")
CONTEXT = web.AppKey("review_context", ReviewContext)
ACTION_LOCK = web.AppKey("review_action_lock", asyncio.Lock)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("review_clock")


def _context(request: web.Request) -> ReviewContext:
    return request.app[CONTEXT]


def _csrf(request: web.Request) -> str:
    session = request.get(security.SESSION)
    return session.csrf_token if session is not None else ""


def _here(request: web.Request) -> str:
    return str(request.rel_url)


async def _counts(context: ReviewContext) -> dict[str, int]:
    return await queries.placement_counts(context.catalogue)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


async def index(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/quarantine")


def _queue_views(placement: str, confirmed_view: bool, undecided: int,
                 confirmed: int) -> list[pages.View]:
    if placement != "quarantine":
        return []
    return [pages.View("To decide", "/quarantine", undecided, not confirmed_view),
            pages.View("Confirmed", "/quarantine/confirmed", confirmed, confirmed_view)]


async def _list(request: web.Request, placement: str, title: str, *,
                confirmed_view: bool = False) -> web.Response:
    context = _context(request)
    counts = await _counts(context)
    try:
        filters = queries.Filters.from_query(request.query)
    except ValueError as error:
        return _html(pages.message_page("Bad filter", str(error), counts, _csrf(request)),
                     status=400)
    default_tag = next(iter(context.policy.quarantine_tags), "nsfw")
    items = await queries.list_items(context.catalogue, placement, filters, default_tag)
    quarantine_tags = context.policy.quarantine_tags
    confirmed = [item for item in items if queries.is_confirmed(item, quarantine_tags)]
    views = _queue_views(placement, confirmed_view, len(items) - len(confirmed),
                         len(confirmed))
    if placement == "quarantine":
        items = confirmed if confirmed_view else [
            item for item in items if not queries.is_confirmed(item, quarantine_tags)]
    size = context.settings.page_size
    shown = items[(filters.page - 1) * size: filters.page * size]
    tag_counts = None
    if placement == "library":
        tag_counts = await context.catalogue.counts_by_tag()
        filter_tags = sorted(tag_counts)
    else:
        filter_tags = pages.label_tags(context.policy, items)
    body = pages.list_page(
        title, request.path, shown, total=len(items), filters=filters,
        policy=context.policy, csrf=_csrf(request), next_url=_here(request),
        sources=await queries.all_sources(context.catalogue), counts=counts,
        page_size=size, filter_tags=filter_tags, tag_counts=tag_counts, views=views,
    )
    return _html(body)


async def quarantine(request: web.Request) -> web.Response:
    return await _list(request, "quarantine", "Quarantine: to decide")


async def confirmed(request: web.Request) -> web.Response:
    return await _list(request, "quarantine", "Quarantine: confirmed", confirmed_view=True)


async def held(request: web.Request) -> web.Response:
    return await _list(request, "held", "Held")


async def library(request: web.Request) -> web.Response:
    return await _list(request, "library", "Library")


async def leave(request: web.Request) -> web.Response:
    """The interstitial before a URL from a source (a new tab, no referrer, no session)."""
    url = request.query.get("url", "")
    status = 200 if url else 400
    return _html(pages.leave_page(url, _csrf(request), await _counts(_context(request))),
                 status=status)


async def item(request: web.Request) -> web.Response:
    context = _context(request)
    detail = await queries.item_detail(context.catalogue, request.match_info["sha"])
    if detail is None:
        raise web.HTTPNotFound(text="404: no filed image with this sha256\n")
    return _html(pages.item_page(detail, context.policy, _csrf(request), await _counts(context)))


# Types Pillow's table lacks, or names differently from what browsers expect.
def image_content_type(data: bytes) -> str | None:
    """The image type of `data` from its magic bytes (never the catalogue), or None."""
    image_format = sniff_format(data[:SNIFF_BYTES])
    if image_format is None:
        return None
    return MEDIA_TYPES.get(image_format)


async def image(request: web.Request) -> web.Response:
    context = _context(request)
    sha256 = request.match_info["sha"]
    found = await queries.served_blob(context.catalogue, sha256)
    if found is None:
        raise web.HTTPNotFound(text="404: no filed image with this sha256\n")
    path = context.layout.store_file(sha256, found[0])
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise web.HTTPNotFound(text="404: the image file is missing\n") from None
    content_type = image_content_type(data)
    if content_type is None:
        shown = path.relative_to(context.layout.root)
        raise web.HTTPNotFound(
            text=f"404: the stored file {shown} is not an image (damaged on disk?); "
                 "check it, then `megane delete SHA` if it is beyond repair\n")
    return web.Response(body=data, content_type=content_type)


async def thumb(request: web.Request) -> web.Response:
    context = _context(request)
    sha256 = request.match_info["sha"]
    found = await queries.served_blob(context.catalogue, sha256)
    if found is None:
        raise web.HTTPNotFound(text="404: no filed image with this sha256\n")
    target = cached_thumbnail_path(context.layout, sha256)
    source = context.layout.store_file(sha256, found[0])
    try:
        if not target.exists():
            await asyncio.to_thread(write_thumbnail, target, source, context.settings.blur_radius)
        data = await asyncio.to_thread(target.read_bytes)
    except FileNotFoundError:
        raise web.HTTPNotFound(text="404: the image file is missing\n") from None
    return web.Response(body=data, content_type="image/jpeg")


async def script(_request: web.Request) -> web.Response:
    return web.Response(text=REVIEW_JS, content_type="text/javascript", charset="utf-8")


async def stylesheet(_request: web.Request) -> web.Response:
    return web.Response(text=REVIEW_CSS, content_type="text/css", charset="utf-8")


# -- actions ----------------------------------------------------------------------------


def _safe_next(value: object, default: str) -> str:
    """A local path to go back to; anything else (other hosts, schemes) -> `default`."""
    if (isinstance(value, str) and value.startswith("/") and not value.startswith("//")
            and "\\" not in value and not any(ord(ch) < 32 for ch in value)):
        return value
    return default


def parse_labels(values: list[str]) -> list[tuple[str, bool]]:
    """`TAG=yes|no` strings -> (tag, value); raises ValueError naming the bad one."""
    labels = []
    for text in values:
        tag, _, value = text.strip().lower().partition("=")
        if not TAG_PATTERN.match(tag) or value not in ("yes", "no"):
            raise ValueError(f"{text!r}: labels are TAG=yes or TAG=no")
        labels.append((tag, value == "yes"))
    if not labels:
        raise ValueError("no label given: send label=TAG=yes or label=TAG=no")
    return labels


async def _act(request: web.Request, action: str) -> web.StreamResponse:
    context = _context(request)
    sha256 = request.match_info["sha"]
    if await queries.served_blob(context.catalogue, sha256) is None:
        raise web.HTTPNotFound(text="404: no filed image with this sha256\n")
    form = await request.post()
    now = request.app[CLOCK]()
    result: dict[str, Any] = {"sha256": sha256, "action": action}
    async with request.app[ACTION_LOCK]:
        if action == "delete":
            await actions.delete(context, sha256, now)
            result["placement"] = "rejected"
        else:
            if action == "release":
                labels = context.release_labels()
            elif action == "confirm":
                labels = context.confirm_labels()
            else:
                try:
                    labels = parse_labels([str(v) for v in form.getall("label", [])])
                except ValueError as error:
                    raise web.HTTPBadRequest(text=f"400: {error}\n") from None
            decision = await actions.apply_labels(context, sha256, labels, REVIEW_UI, now)
            result.update(placement=decision.placement.value, reason=decision.reason,
                          tags=list(decision.tags),
                          labels={tag: value for tag, value in labels})
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(result)
    default = "/quarantine" if action == "delete" else f"/item/{sha256}"
    raise web.HTTPSeeOther(_safe_next(form.get("next"), default))


async def release(request: web.Request) -> web.StreamResponse:
    return await _act(request, "release")


async def confirm(request: web.Request) -> web.StreamResponse:
    return await _act(request, "confirm")


async def label(request: web.Request) -> web.StreamResponse:
    return await _act(request, "label")


async def delete(request: web.Request) -> web.StreamResponse:
    return await _act(request, "delete")


def make_app(config: Config, catalogue: Catalogue, layout: DataLayout, token: str, *,
             host_name: str, clock: Callable[[], float] = time.time) -> web.Application:
    """The review application over an open catalogue; `token` is the access token.

    It answers only to `host_name` (see `security.new_host_name`); `clock` gives the
    time of decisions, session idleness and sign-in lock-outs.
    """
    if len(token) < 16:
        raise ValueError("the review token must be at least 16 characters")
    context = ReviewContext.from_config(catalogue, config, layout)
    app = web.Application(client_max_size=64 * 1024)
    settings = context.settings
    security.install(app, security.Guard(
        token, host_name, session_idle_s=settings.session_idle_s,
        login_backoff_s=settings.login_backoff_s, clock=clock))
    app[CONTEXT] = context
    app[ACTION_LOCK] = asyncio.Lock()
    app[CLOCK] = clock
    app.router.add_get("/", index)
    app.router.add_get("/quarantine", quarantine)
    app.router.add_get("/quarantine/confirmed", confirmed)
    app.router.add_get("/leave", leave)
    app.router.add_get("/held", held)
    app.router.add_get("/library", library)
    app.router.add_get(f"/item/{SHA}", item)
    app.router.add_get(f"/image/{SHA}", image)
    app.router.add_get(f"/thumb/{SHA}", thumb)
    app.router.add_get("/static/review.js", script)
    app.router.add_get("/static/review.css", stylesheet)
    app.router.add_post(f"/item/{SHA}/release", release)
    app.router.add_post(f"/item/{SHA}/confirm", confirm)
    app.router.add_post(f"/item/{SHA}/label", label)
    app.router.add_post(f"/item/{SHA}/delete", delete)
    return app
