"""The review UI's defences: its own origin, token and sessions, CSRF, response headers.

- Origin: the UI answers on a random host name of its own, `megane-<32 hex>.localhost`
  (browsers and curl resolve every `*.localhost` name to loopback, RFC 6761). Cookies
  ignore ports, so a cookie for `127.0.0.1` would also be sent to every other service on
  127.0.0.1; the session cookie is host-only (no Domain attribute) for that random name,
  so no other service ever receives it, and a page cannot guess the name to reach us.
- Host: only that name with the port the server listens on (DNS rebinding: a hostile name
  resolving to 127.0.0.1 still sends its own Host). A missing or malformed Host is 400,
  any other host (127.0.0.1 and localhost included) 421.
- Authentication: `Authorization: Bearer TOKEN` (scripts), or a session cookie. A session
  comes from the printed URL with `?token=TOKEN`, which works once (the answer sets an
  HttpOnly, SameSite=Strict, Path=/ cookie and redirects to the same URL without the
  token), or from the sign-in form at /login (POST, same origin only). Sessions end at
  sign-out (POST /logout) or after `session_idle_s` without a request.
- Failed sign-ins (a wrong token by any of the three ways) lock the client out for
  `login_backoff_s`, doubled at each further failure up to `LOGIN_BACKOFF_MAX_S`; while
  locked out every attempt answers 429 with Retry-After, the right token too.
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
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from crawler.review import pages

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]

HOST_SUFFIX = ".localhost"
SESSION_COOKIE = "megane_review_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_PARAMETER = "token"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
LOGIN_BACKOFF_MAX_S = 600.0
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
    "401: open the URL that `megane review` printed (its token works once), sign in at "
    "/login with the token, or send `Authorization: Bearer TOKEN`.\n"
)
LINK_USED_TEXT = (
    "401: this sign-in link was already used (it works once); sign in at /login with the "
    "token, or restart `megane review` for a new link.\n"
)


ALLOWED_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""The loopback names the metrics endpoint answers to (the review UI has a name of its own)."""


def new_host_name() -> str:
    """A random host name under .localhost: the UI's own origin (128 random bits)."""
    return f"megane-{secrets.token_hex(16)}{HOST_SUFFIX}"


@dataclass(frozen=True)
class Session:
    csrf_token: str


AUTH = web.RequestKey("review_auth", str)
"""How the request authenticated: "bearer" or "session"."""
SESSION = web.RequestKey("review_session", Session)


class Sessions:
    """Browser sessions in memory (a restart of `megane review` signs everyone out).

    Keys are the sha256 of the cookie value, so a lookup reveals nothing by its timing.
    A session unused for `idle_s` is gone; the oldest is dropped beyond `limit`.
    """

    def __init__(self, idle_s: float, limit: int = 64) -> None:
        self.idle_s = idle_s
        self.limit = limit
        self._sessions: collections.OrderedDict[str, tuple[Session, float]] = (
            collections.OrderedDict())

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self, now: float) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32))
        self._sessions[self._key(cookie)] = (session, now)
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None, now: float) -> Session | None:
        """The live session of `cookie` (its idle time restarts), or None."""
        if not cookie:
            return None
        key = self._key(cookie)
        found = self._sessions.get(key)
        if found is None:
            return None
        session, last_used = found
        if now - last_used >= self.idle_s:
            del self._sessions[key]
            return None
        self._sessions[key] = (session, now)
        self._sessions.move_to_end(key)
        return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(self._key(cookie), None)


class LoginThrottle:
    """Per-client lock-out after failed sign-ins, doubling with each consecutive failure.

    Pure bookkeeping over `now` values (no sleeping): after the n-th failure in a row the
    client may try again at `last failure + base_s * 2**(n-1)`, at most `max_s` later.
    """

    def __init__(self, base_s: float, max_s: float = LOGIN_BACKOFF_MAX_S,
                 limit: int = 1024) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.limit = limit
        self._failures: collections.OrderedDict[str, tuple[int, float]] = (
            collections.OrderedDict())

    def delay_s(self, failures: int) -> float:
        """The lock-out after `failures` consecutive failures."""
        if failures <= 0 or self.base_s <= 0:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 60))

    def wait_s(self, client: str, now: float) -> float:
        """Seconds `client` must still wait before its next attempt (0: it may try)."""
        failures, last = self._failures.get(client, (0, 0.0))
        return max(0.0, last + self.delay_s(failures) - now)

    def failed(self, client: str, now: float) -> None:
        failures, _ = self._failures.pop(client, (0, 0.0))
        self._failures[client] = (failures + 1, now)
        while len(self._failures) > self.limit:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


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


def host_refusal(raw: str | None, expected_port: int | None,
                 allowed_hosts: frozenset[str] = ALLOWED_HOSTNAMES) -> tuple[int, str] | None:
    """None when `raw` (a Host header) names one of `allowed_hosts` with `expected_port`,
    else the (status, text) to answer with: 400 for a missing or malformed Host, 421 for
    another.

    Shared by every local HTTP endpoint (the review UI with its own `*.localhost` name, the
    metrics endpoint with the loopback names): a hostile name resolving to 127.0.0.1 (DNS
    rebinding) still sends its own Host. The answer never repeats an allowed name: a page
    on a rebinding name can read it.
    """
    parsed = split_host(raw) if raw else None
    if parsed is None:
        return 400, "400: a Host header with the name and port of this server is required\n"
    host, port = parsed
    if port is None and expected_port == 80:
        port = 80
    if host not in allowed_hosts or port != expected_port:
        return 421, f"421: this server answers only to its own URL (port {expected_port})\n"
    return None


def host_guard(host_name: str) -> Middleware:
    """Refuse any Host but `host_name` with our own port (DNS rebinding, cookie scope)."""
    allowed = frozenset({host_name})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected_port = _local_port(request)
        refusal = host_refusal(request.headers.get("Host"), expected_port, allowed)
        if refusal is None:
            return await handler(request)
        status, _ = refusal
        if status == 400:
            raise web.HTTPBadRequest(
                text="400: a Host header with the name and port `megane review` printed is "
                     "required\n")
        raise web.HTTPMisdirectedRequest(
            text="421: this server answers only to the URL `megane review` printed "
                 f"(http://megane-....localhost:{expected_port}/)\n")

    return middleware


def _equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _same_origin(request: web.Request) -> bool:
    """Not sent from another site: Sec-Fetch-Site and Origin, where the browser sent them.

    Under `Referrer-Policy: no-referrer` browsers send `Origin: null` with our own form
    posts, so "null" proves nothing either way; the CSRF token decides.
    """
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin", "null")
    return origin == "null" or origin == f"http://{request.headers.get('Host', '')}"


def _session_cookie(response: web.StreamResponse, cookie: str) -> None:
    # No Domain attribute: host-only, for our random name alone.
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="Strict", path="/")


class Guard:
    """The token, the sessions and the sign-in throttle of one review server."""

    def __init__(self, token: str, host_name: str, *, session_idle_s: float,
                 login_backoff_s: float, clock: Clock) -> None:
        self.token = token
        self.host_name = host_name
        self.sessions = Sessions(session_idle_s)
        self.throttle = LoginThrottle(login_backoff_s)
        self.clock = clock
        self.link_used = False

    def _client(self, request: web.Request) -> str:
        return request.remote or ""

    def _check_token(self, request: web.Request, given: str | None) -> bool:
        """Compare a presented token; a failure counts, a lock-out answers 429."""
        client, now = self._client(request), self.clock()
        wait = self.throttle.wait_s(client, now)
        if wait > 0:
            raise web.HTTPTooManyRequests(
                text=f"429: too many failed sign-ins; try again in {math.ceil(wait)} s\n",
                headers={"Retry-After": str(math.ceil(wait))})
        if not _equal(given, self.token):
            self.throttle.failed(client, now)
            return False
        self.throttle.succeeded(client)
        return True

    def _start_session(self, target: str) -> web.HTTPSeeOther:
        cookie, _session = self.sessions.create(self.clock())
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"  # never redirect off this server (`//host/...` is another site)
        response = web.HTTPSeeOther(target)
        _session_cookie(response, cookie)
        return response

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The token/session check; a valid `?token=` on a GET opens a session once."""
        if request.path == LOGIN_PATH:
            return await handler(request)
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() != "bearer" or not self._check_token(request, given.strip()):
                raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT,
                                           headers={"WWW-Authenticate": "Bearer"})
            request[AUTH] = "bearer"
            return await handler(request)
        if TOKEN_PARAMETER in request.query:
            if request.method not in SAFE_METHODS or not self._check_token(
                    request, request.query.get(TOKEN_PARAMETER)):
                raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT)
            if self.link_used:
                raise web.HTTPUnauthorized(text=LINK_USED_TEXT)
            self.link_used = True
            query = [(key, value) for key, value in request.query.items()
                     if key != TOKEN_PARAMETER]
            raise self._start_session(str(request.rel_url.with_query(query)))
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock())
        if session is None:
            raise web.HTTPUnauthorized(text=UNAUTHORIZED_TEXT)
        request[AUTH] = "session"
        request[SESSION] = session
        return await handler(request)

    async def login_form(self, _request: web.Request) -> web.Response:
        """GET /login: the sign-in form."""
        return _html(pages.login_page())

    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST /login: the token typed in opens a session (same origin only)."""
        if not _same_origin(request):
            raise web.HTTPForbidden(text="403: sign-in from another origin\n")
        form = await request.post()
        given = form.get("token")
        if not self._check_token(request, given.strip() if isinstance(given, str) else None):
            return _html(pages.login_page("Wrong token."), status=401)
        raise self._start_session("/quarantine")

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """POST /logout (CSRF-checked): end the session and clear its cookie."""
        if request.get(AUTH) != "session":
            raise web.HTTPBadRequest(text="400: only a browser session can sign out\n")
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther(LOGIN_PATH)
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def csrf_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A cookie session's changes need its CSRF token and must come from our origin."""
    if (request.method in SAFE_METHODS or request.get(AUTH) == "bearer"
            or request.path == LOGIN_PATH):
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


def install(app: web.Application, guard: Guard) -> None:
    """Add the middlewares (Host, then auth, then CSRF), sign-in routes, response headers."""
    app.middlewares.extend([host_guard(guard.host_name), guard.auth, csrf_guard])
    app.router.add_get(LOGIN_PATH, guard.login_form)
    app.router.add_post(LOGIN_PATH, guard.login)
    app.router.add_post(LOGOUT_PATH, guard.logout)
    app.on_response_prepare.append(add_security_headers)
