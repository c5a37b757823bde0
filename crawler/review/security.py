"""The review UI's defences: Host check, token and session, CSRF, response headers.

- Host: only `localhost`, `127.0.0.1` or `[::1]` with the port the server listens on
  (DNS rebinding: a hostile name resolving to 127.0.0.1 still sends its own Host).
  A missing or malformed Host is 400, any other host 421.
- Authentication: `Authorization: Bearer TOKEN` (scripts), or a session cookie. The
  session comes from opening any page once with `?token=TOKEN`: the answer sets an
  HttpOnly, SameSite=Strict cookie and redirects to the same URL without the token.
- CSRF: every request but GET/HEAD from a cookie session carries the session's CSRF
  token (form field `csrf` or header `X-CSRF-Token`), compared in constant time, and
  must not come from another origin (`Origin`, `Sec-Fetch-Site`). Bearer requests are
  exempt: a browser never attaches that header on its own, so it cannot be forged.
- Every response, errors included, carries a strict CSP, nosniff, no-referrer,
  `Cache-Control: no-store` and frame denial.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOWED_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
SESSION_COOKIE = "megane_review_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_PARAMETER = "token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
UNAUTHORIZED_TEXT = (
    "401: open the URL that `megane review` printed (it carries the token once), "
    "or send `Authorization: Bearer TOKEN`.\n"
)


@dataclass(frozen=True)
class Session:
    csrf_token: str


AUTH = web.RequestKey("review_auth", str)
"""How the request authenticated: "bearer" or "session"."""
SESSION = web.RequestKey("review_session", Session)


class Sessions:
    """Browser sessions in memory (a restart of `megane review` signs everyone out).

    Keys are the sha256 of the cookie value, so a lookup reveals nothing by its timing.
    The oldest session is dropped beyond `limit`.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32))
        self._sessions[self._key(cookie)] = session
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        return self._sessions.get(self._key(cookie)) if cookie else None


def split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` (IPv6 in brackets) -> (host, port); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[:end + 1], value[end + 1:]
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
    if not host:
        return None
    if not rest:
        return host, None
    digits = rest[1:]
    if not rest.startswith(":") or not (digits.isascii() and digits.isdigit()) or len(digits) > 5:
        return None
    return host, int(digits)


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def host_refusal(raw: str | None, expected_port: int | None) -> tuple[int, str] | None:
    """None when `raw` (a Host header) names a loopback host with `expected_port`, else
    the (status, text) to answer with: 400 for a missing or malformed Host, 421 for another.

    Shared by every local HTTP endpoint (the review UI, the metrics endpoint): a hostile
    name resolving to 127.0.0.1 (DNS rebinding) still sends its own Host.
    """
    parsed = split_host(raw) if raw else None
    if parsed is None:
        return 400, "400: a Host header of localhost:PORT is required\n"
    host, port = parsed
    if port is None and expected_port == 80:
        port = 80
    if host not in ALLOWED_HOSTNAMES or port != expected_port:
        return 421, f"421: this server answers only to 127.0.0.1:{expected_port}\n"
    return None


@web.middleware
async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse any Host but a loopback name with our own port (DNS rebinding)."""
    refusal = host_refusal(request.headers.get("Host"), _local_port(request))
    if refusal is not None:
        status, text = refusal
        if status == 400:
            raise web.HTTPBadRequest(text=text)
        raise web.HTTPMisdirectedRequest(text=text)
    return await handler(request)


def _equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def auth_guard(token: str, sessions: Sessions) -> Middleware:
    """The token/session check; a valid `?token=` on a GET opens a session."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() != "bearer" or not _equal(given.strip(), token):
                raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT,
                                           headers={"WWW-Authenticate": "Bearer"})
            request[AUTH] = "bearer"
            return await handler(request)
        if TOKEN_PARAMETER in request.query:
            if request.method not in SAFE_METHODS or not _equal(
                    request.query.get(TOKEN_PARAMETER), token):
                raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT)
            cookie, _session = sessions.create()
            query = [(key, value) for key, value in request.query.items()
                     if key != TOKEN_PARAMETER]
            target = str(request.rel_url.with_query(query))
            if not target.startswith("/") or target.startswith("//") or "\\" in target:
                target = "/"  # never redirect off this server (`//host/...` is another site)
            response = web.HTTPSeeOther(target)
            response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="Strict",
                                path="/")
            raise response
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT)
        request[AUTH] = "session"
        request[SESSION] = session
        return await handler(request)

    return middleware


def _same_origin(request: web.Request) -> bool:
    """Not sent from another site: Sec-Fetch-Site and Origin, where the browser sent them.

    Under `Referrer-Policy: no-referrer` browsers send `Origin: null` with our own form
    posts, so "null" proves nothing either way; the CSRF token decides.
    """
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin", "null")
    return origin == "null" or origin == f"http://{request.headers.get('Host', '')}"


@web.middleware
async def csrf_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A cookie session's changes need its CSRF token and must come from our origin."""
    if request.method in SAFE_METHODS or request.get(AUTH) == "bearer":
        return await handler(request)
    session = request[SESSION]
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
            "application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not _same_origin(request) or not _equal(given, session.csrf_token):
        raise web.HTTPForbidden(text="403: missing or wrong CSRF token, or another origin\n")
    return await handler(request)


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the same strict headers on every response, errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


def install(app: web.Application, token: str, sessions: Sessions) -> None:
    """Add the middlewares (Host, then auth, then CSRF) and the response headers."""
    app.middlewares.extend([host_guard, auth_guard(token, sessions), csrf_guard])
    app.on_response_prepare.append(add_security_headers)
