"""The review web UI's HTTP surface: Host check, auth, CSRF, headers, images, actions."""

from __future__ import annotations

import asyncio
import html
import io
import json
import os
import re
from collections.abc import Callable
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from crawler.cli import build_parser
from crawler.config import Config
from crawler.errors import ConfigError
from crawler.review.app import image_content_type
from crawler.review.security import (
    LOGIN_BACKOFF_MAX_S,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    LoginThrottle,
)
from crawler.review.server import TokenError, new_token, resolve_token, run_review
from crawler.review.settings import ReviewSettings
from crawler.display import linkable_url
from storage.display import BIDI_CONTROLS, clip, neutralise_bidi
from storage.placement import DataLayout
from tests.conftest import photo
from tests.review_fixtures import (
    REVIEW_CONFIG,
    REVIEW_HOST,
    TOKEN,
    FakeClock,
    LocalhostResolver,
    ReviewState,
    review_server,
    review_state_fixture,
    serving_review,
    store_photo,
)

GET_ROUTES = ["/", "/quarantine", "/quarantine/confirmed", "/held", "/library",
              "/library?tag=untagged", "/leave?url=https://a.example/post/1",
              "/static/review.js", "/static/review.css"]
SHA_GET_ROUTES = ["/item/{sha}", "/image/{sha}", "/thumb/{sha}"]
POST_ROUTES = ["/item/{sha}/release", "/item/{sha}/confirm", "/item/{sha}/label",
               "/item/{sha}/delete"]
UNKNOWN_SHA = "0" * 64


async def raw_request(port: int, request_line: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send a request line byte for byte (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"{request_line} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


class TestHostCheck:
    async def test_own_name_with_our_port_is_served(self, review_state: ReviewState) -> None:
        """The server's own `*.localhost` name with its port is accepted, in any letter case."""
        for host in (review_state.host, review_state.host.upper()):
            response = await review_state.client.get(
                "/quarantine", headers={**review_state.bearer, "Host": host})
            assert response.status == 200

    @pytest.mark.parametrize("host", [
        "evil.example:{port}", "127.0.0.1.nip.io:{port}", "localtest.me:{port}",
        "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "{name}:{other}", "{name}",
        "127.0.0.1", "localhost.:{port}", "0.0.0.0:{port}", "{name}.:{port}",
        "megane-ffffffffffffffffffffffffffffffff.localhost:{port}", "x.{name}:{port}",
    ])
    async def test_other_hosts_are_misdirected(self, review_state: ReviewState, host: str) -> None:
        """Loopback literals, a rebinding name, another name, port or no port: 421, token or not."""
        value = host.format(port=review_state.port, other=review_state.port + 1,
                            name=REVIEW_HOST)
        response = await review_state.client.get(
            "/quarantine", headers={**review_state.bearer, "Host": value})
        assert response.status == 421
        text = await response.text()
        assert "421" in text and REVIEW_HOST not in text  # a rebinding page reads this

    @pytest.mark.parametrize("host", ["[::1", "localhost:abc", "localhost:99999999", ":80"])
    async def test_malformed_host_is_a_bad_request(self, review_state: ReviewState,
                                                   host: str) -> None:
        """A Host header that does not parse is refused with 400."""
        response = await review_state.client.get(
            "/quarantine", headers={**review_state.bearer, "Host": host})
        assert response.status == 400

    async def test_missing_host_is_a_bad_request(self, review_state: ReviewState) -> None:
        """A request without any Host header is refused with 400."""
        status, _ = await raw_request(review_state.port, "GET /quarantine",
                                      review_state.bearer)
        assert status == 400


class TestAuthentication:
    @pytest.mark.parametrize("route", GET_ROUTES + SHA_GET_ROUTES)
    async def test_every_page_needs_credentials(self, review_state: ReviewState,
                                                route: str) -> None:
        """Without a token or session every GET route answers 401 and shows nothing."""
        path = route.format(sha=review_state.shas["astronaut"])
        response = await review_state.client.get(path, allow_redirects=False)
        assert response.status == 401
        assert response.content_type == "text/plain"

    @pytest.mark.parametrize("route", POST_ROUTES)
    async def test_every_action_needs_credentials(self, review_state: ReviewState,
                                                  route: str) -> None:
        """Without credentials every POST route answers 401 and changes nothing."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(route.format(sha=sha), data={"label": "x=yes"})
        assert response.status == 401
        assert await review_state.placement(sha) == "quarantine"

    @pytest.mark.parametrize("authorization", [
        "Bearer wrong-token-0123456789", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ",
        TOKEN,
    ])
    async def test_wrong_authorization_is_refused(self, review_state: ReviewState,
                                                  authorization: str) -> None:
        """A wrong bearer token, or another scheme, answers 401."""
        response = await review_state.client.get("/quarantine",
                                                 headers={"Authorization": authorization})
        assert response.status == 401

    async def test_bearer_token_is_accepted(self, review_state: ReviewState) -> None:
        """`Authorization: Bearer TOKEN` opens every page without a cookie."""
        response = await review_state.client.get("/quarantine", headers=review_state.bearer)
        assert response.status == 200
        assert SESSION_COOKIE not in response.cookies

    async def test_query_token_sets_a_strict_cookie_and_drops_the_token(
            self, review_state: ReviewState) -> None:
        """?token= answers 303 to the same URL without it and sets an HttpOnly Strict cookie."""
        response = await review_state.client.get(
            f"/held?source=feed-a&token={TOKEN}", allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"] == "/held?source=feed-a"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie  # host-only: the UI's own name alone
        assert TOKEN not in cookie
        followed = await review_state.client.get("/held?source=feed-a")
        assert followed.status == 200

    async def test_wrong_query_token_sets_no_cookie(self, review_state: ReviewState) -> None:
        """A wrong ?token= answers 401 with no session cookie."""
        response = await review_state.client.get("/quarantine?token=nope-nope-nope-nope",
                                                 allow_redirects=False)
        assert response.status == 401
        assert "Set-Cookie" not in response.headers

    async def test_query_token_is_not_accepted_on_post(self, review_state: ReviewState) -> None:
        """A POST cannot authenticate with ?token= (it must come from a session or bearer)."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(f"/item/{sha}/release?token={TOKEN}")
        assert response.status == 401
        assert await review_state.placement(sha) == "quarantine"

    async def test_forged_session_cookie_is_refused(self, review_state: ReviewState) -> None:
        """A cookie that the server never issued answers 401."""
        review_state.client.session.cookie_jar.update_cookies({SESSION_COOKIE: "forged"})
        response = await review_state.client.get("/quarantine")
        assert response.status == 401


class TestCsrf:
    async def test_post_without_csrf_token_is_forbidden(self, review_state: ReviewState) -> None:
        """A cookie-session POST without the CSRF token answers 403 and changes nothing."""
        await review_state.login()
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(f"/item/{sha}/release", data={"next": "/"})
        assert response.status == 403
        assert await review_state.placement(sha) == "quarantine"

    async def test_post_with_wrong_csrf_token_is_forbidden(self, review_state: ReviewState) -> None:
        """A cookie-session POST with another token answers 403."""
        csrf = await review_state.login()
        sha = review_state.shas["astronaut"]
        for wrong in (csrf[:-1], csrf + "x", "", "a" * len(csrf)):
            response = await review_state.client.post(f"/item/{sha}/release",
                                                      data={"csrf": wrong})
            assert response.status == 403
        assert await review_state.placement(sha) == "quarantine"

    async def test_csrf_token_is_per_session(self, review_state: ReviewState) -> None:
        """Each session gets its own CSRF token; another session's token is refused."""
        first = await review_state.login()
        review_state.client.session.cookie_jar.clear()
        second = await review_state.login()
        assert first != second
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(f"/item/{sha}/release", data={"csrf": first})
        assert response.status == 403

    async def test_cross_origin_post_is_forbidden_even_with_the_token(
            self, review_state: ReviewState) -> None:
        """An Origin or Sec-Fetch-Site of another site answers 403."""
        csrf = await review_state.login()
        sha = review_state.shas["astronaut"]
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"},
                        {"Origin": f"http://localhost:{review_state.port}"}):
            response = await review_state.client.post(f"/item/{sha}/release",
                                                      data={"csrf": csrf}, headers=headers)
            assert response.status == 403
        assert await review_state.placement(sha) == "quarantine"

    async def test_csrf_token_in_a_header_is_accepted(self, review_state: ReviewState) -> None:
        """The token may come as X-CSRF-Token (same origin) instead of a form field."""
        csrf = await review_state.login()
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(
            f"/item/{sha}/release", headers={"X-CSRF-Token": csrf, "Accept": "application/json",
                                             "Origin": f"http://{review_state.host}"})
        assert response.status == 200
        assert (await response.json())["placement"] == "library"

    async def test_bearer_requests_need_no_csrf_token(self, review_state: ReviewState) -> None:
        """Scripts with the bearer header are not CSRF-prone and need no CSRF token."""
        sha = review_state.shas["coffee"]
        response = await review_state.client.post(
            f"/item/{sha}/confirm", headers={**review_state.bearer, "Accept": "application/json"})
        assert response.status == 200
        assert await review_state.placement(sha) == "quarantine"


class TestSecurityHeaders:
    @pytest.mark.parametrize("route", GET_ROUTES + SHA_GET_ROUTES + [
        "/item/" + UNKNOWN_SHA, "/image/" + UNKNOWN_SHA, "/nowhere", "/quarantine?min=x"])
    async def test_every_response_carries_the_headers(self, review_state: ReviewState,
                                                      route: str) -> None:
        """Pages, images, static files and errors all carry CSP, nosniff, no-referrer, no-store."""
        path = route.format(sha=review_state.shas["astronaut"])
        response = await review_state.client.get(path, headers=review_state.bearer,
                                                 allow_redirects=False)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
        assert response.headers["Content-Security-Policy"] == (
            "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'")

    async def test_refusals_carry_the_headers_too(self, review_state: ReviewState) -> None:
        """401, 403 and 421 answers carry the same headers."""
        responses = [
            await review_state.client.get("/quarantine"),
            await review_state.client.get("/quarantine", headers={
                **review_state.bearer, "Host": f"evil.example:{review_state.port}"}),
        ]
        await review_state.login()
        responses.append(await review_state.client.post(
            f"/item/{review_state.shas['astronaut']}/release"))
        assert [response.status for response in responses] == [401, 421, 403]
        for response in responses:
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value

    async def test_pages_have_no_inline_script_or_style(self, review_state: ReviewState) -> None:
        """Pages load only /static/review.js and .css (the CSP would block inline code)."""
        sha = review_state.shas["astronaut"]
        for path in ("/quarantine", "/held", "/library", f"/item/{sha}"):
            page = await (await review_state.client.get(path, headers=review_state.bearer)).text()
            assert "<script>" not in page and "<style" not in page and " style=" not in page
            assert " on" + "click=" not in page
            assert '<script src="/static/review.js" defer></script>' in page


class TestImages:
    async def test_full_image_has_its_detected_content_type(
            self, review_state: ReviewState) -> None:
        """/image/<sha> serves the stored bytes typed by the format Pillow detected."""
        for name, expected in (("astronaut", "image/jpeg"), ("chelsea", "image/png")):
            sha = review_state.shas[name]
            response = await review_state.client.get(f"/image/{sha}",
                                                     headers=review_state.bearer)
            assert response.status == 200
            assert response.content_type == expected
            blob = await review_state.catalogue.get_blob(sha)
            assert await response.read() == review_state.layout.store_file(
                sha, blob.extension).read_bytes()

    async def test_thumbnail_is_a_small_blurred_jpeg(self, review_state: ReviewState) -> None:
        """/thumb/<sha> is a JPEG of at most 256 px, cached with mode 0600."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.get(f"/thumb/{sha}", headers=review_state.bearer)
        assert response.status == 200 and response.content_type == "image/jpeg"
        with Image.open(io.BytesIO(await response.read())) as image:
            assert image.format == "JPEG" and max(image.size) <= 256
        cached = review_state.layout.cache / "thumbs" / f"{sha}.jpg"
        assert cached.stat().st_mode & 0o777 == 0o600

    @pytest.mark.parametrize("route", SHA_GET_ROUTES)
    @pytest.mark.parametrize("sha", [UNKNOWN_SHA, "abc", "A" * 64, "0" * 63, "0" * 65])
    async def test_unknown_or_malformed_sha_is_404(self, review_state: ReviewState, route: str,
                                                   sha: str) -> None:
        """Only a full lowercase sha256 of a filed image is served; anything else is 404."""
        response = await review_state.client.get(route.format(sha=sha),
                                                 headers=review_state.bearer)
        assert response.status == 404

    async def test_sha_prefix_is_not_enough(self, review_state: ReviewState) -> None:
        """A prefix of a real sha256 does not address the image in URLs."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.get(f"/image/{sha[:12]}",
                                                 headers=review_state.bearer)
        assert response.status == 404

    @pytest.mark.parametrize("path", [
        "/image/../../etc/passwd",
        "/image/..%2F..%2Fetc%2Fpasswd",
        "/image/%2e%2e/%2e%2e/etc/passwd",
        "/image/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/image/..%252F..%252Fetc%252Fpasswd",
        "/image/....//....//etc/passwd",
        "/thumb/..%5C..%5Cetc%5Cpasswd",
        "/thumb/%00/../etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/{sha}/../../../../etc/passwd",
        "/image/{sha}%2F..%2F..%2Fcatalogue.sqlite",
        "/item/../../catalogue.sqlite",
        "//etc/passwd",
    ])
    async def test_path_traversal_attempts_are_404(self, review_state: ReviewState,
                                                   path: str) -> None:
        """Traversal in any spelling finds no route: 404, no file content."""
        raw = path.format(sha=review_state.shas["astronaut"])
        status, body = await raw_request(review_state.port, f"GET {raw}", {
            **review_state.bearer, "Host": review_state.host})
        assert status == 404, raw
        assert b"root:" not in body and b"SQLite" not in body

    async def test_deleted_image_is_no_longer_served(self, review_state: ReviewState) -> None:
        """After a delete, the image and its thumbnail are 404."""
        sha = review_state.shas["chelsea"]
        response = await review_state.client.post(f"/item/{sha}/delete",
                                                  headers=review_state.bearer)
        assert response.status == 200
        for route in SHA_GET_ROUTES:
            response = await review_state.client.get(route.format(sha=sha),
                                                     headers=review_state.bearer)
            assert response.status == 404


class TestPages:
    async def test_quarantine_queue_shows_blurred_thumbnails_only(
            self, review_state: ReviewState) -> None:
        """The queue lists quarantined images with /thumb sources; full images only as links."""
        page = await (await review_state.client.get("/quarantine",
                                                    headers=review_state.bearer)).text()
        for name in ("astronaut", "coffee"):
            sha = review_state.shas[name]
            assert f'<img src="/thumb/{sha}"' in page
            assert f'<img src="/image/{sha}"' not in page
        assert review_state.shas["chelsea"] not in page
        assert review_state.shas["rocket"] not in page

    async def test_held_and_library_pages_list_their_images(
            self, review_state: ReviewState) -> None:
        """/held lists the unclassified photo; /library the clean one and its tag."""
        held = await (await review_state.client.get("/held", headers=review_state.bearer)).text()
        assert review_state.shas["rocket"] in held
        assert review_state.shas["astronaut"] not in held
        library = await (await review_state.client.get(
            "/library?tag=untagged", headers=review_state.bearer)).text()
        assert review_state.shas["chelsea"] in library
        assert 'href="/library?tag=untagged"' in library

    @pytest.mark.parametrize(("query", "expected"), [
        ("min=0.9", {"astronaut"}),
        ("max=0.9", {"coffee"}),
        ("min=0.8&max=1", {"astronaut", "coffee"}),
        ("tag=megane&min=0.15", {"coffee"}),
        ("source=feed-a", {"astronaut"}),
        ("source=feed-c", set()),
    ])
    async def test_filters_by_score_tag_and_source(self, review_state: ReviewState, query: str,
                                                   expected: set[str]) -> None:
        """Score range (of the chosen tag, default nsfw), tag and source filter the queue."""
        page = await (await review_state.client.get(f"/quarantine?{query}",
                                                    headers=review_state.bearer)).text()
        shown = {name for name in ("astronaut", "coffee")
                 if f'id="card-{review_state.shas[name]}"' in page}
        assert shown == expected

    @pytest.mark.parametrize("query", ["min=x", "max=2", "min=-0.1", "page=0", "page=x",
                                       "min=nan"])
    async def test_bad_filter_is_a_bad_request(self, review_state: ReviewState,
                                               query: str) -> None:
        """An unparseable filter answers 400 naming it."""
        response = await review_state.client.get(f"/quarantine?{query}",
                                                 headers=review_state.bearer)
        assert response.status == 400
        assert query.partition("=")[0] in await response.text()

    async def test_image_page_shows_scores_labels_sources_escaped(
            self, review_state: ReviewState) -> None:
        """The image page lists scores, sources and labels, with hostile text escaped."""
        sha = review_state.shas["astronaut"]
        page = await (await review_state.client.get(f"/item/{sha}",
                                                    headers=review_state.bearer)).text()
        assert "0.9500" in page and "feed-a" in page and "https://a.example/post/1" in page
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert 'data-label="megane=yes"' in page and 'data-key="r"' in page

    async def test_root_redirects_to_the_queue(self, review_state: ReviewState) -> None:
        """/ answers 303 to /quarantine."""
        response = await review_state.client.get("/", headers=review_state.bearer,
                                                 allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/quarantine"

    async def test_static_files_have_their_types(self, review_state: ReviewState) -> None:
        """The script and stylesheet are served with JavaScript and CSS types."""
        script = await review_state.client.get("/static/review.js", headers=review_state.bearer)
        style = await review_state.client.get("/static/review.css", headers=review_state.bearer)
        assert script.content_type == "text/javascript" and "keydown" in await script.text()
        assert style.content_type == "text/css"


def _files(data_dir: Path, sha: str) -> set[str]:
    return {str(path.relative_to(data_dir)) for path in data_dir.rglob(f"{sha}*")
            if "store" not in path.parts and "cache" not in path.parts}


class TestActions:
    async def test_release_moves_to_the_library_and_records_a_label(
            self, review_state: ReviewState) -> None:
        """POST release: nsfw=no by review-ui, file moved to the library, sheet rewritten."""
        csrf = await review_state.login()
        sha = review_state.shas["astronaut"]
        data_dir = review_state.config.data_dir
        assert _files(data_dir, sha) == {f"quarantine/{sha}.jpg", f"quarantine/{sha}.json"}
        response = await review_state.client.post(
            f"/item/{sha}/release", data={"csrf": csrf, "next": "/quarantine?page=1"},
            allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"] == "/quarantine?page=1"
        assert await review_state.placement(sha) == "library"
        assert await review_state.labels(sha) == [("nsfw", False, "human", "review-ui")]
        assert _files(data_dir, sha) == {f"library/untagged/{sha}.jpg"}
        index = (data_dir / "quarantine" / "index.html").read_text()
        assert sha not in index and review_state.shas["coffee"] in index
        media = await review_state.catalogue.media_for_blob(sha)
        assert {row.state.value for row in media} == {"library"}

    async def test_confirm_keeps_in_quarantine_and_blocks_the_hash(
            self, review_state: ReviewState) -> None:
        """POST confirm on a held photo: nsfw=yes, moved to quarantine, its dHash blocked."""
        csrf = await review_state.login()
        sha = review_state.shas["rocket"]
        response = await review_state.client.post(f"/item/{sha}/confirm", data={"csrf": csrf})
        assert response.status == 200  # followed the redirect to the image page
        assert await review_state.placement(sha) == "quarantine"
        assert await review_state.labels(sha) == [("nsfw", True, "human", "review-ui")]
        data_dir = review_state.config.data_dir
        assert _files(data_dir, sha) == {f"quarantine/{sha}.jpg", f"quarantine/{sha}.json",
                                         f"quarantine/.thumbs/{sha}.jpg"}
        blocked = await review_state.catalogue.fetch_all(
            "SELECT reason FROM blocked_hashes WHERE sha256 = ?", (sha,))
        assert [row["reason"] for row in blocked] == ["confirmed_nsfw"]
        assert sha in (data_dir / "quarantine" / "index.html").read_text()

    async def test_label_adds_and_removes_a_library_tag(self, review_state: ReviewState) -> None:
        """POST label megane=yes files the image under library/megane; =no takes it out."""
        csrf = await review_state.login()
        sha = review_state.shas["chelsea"]
        data_dir = review_state.config.data_dir
        await review_state.client.post(f"/item/{sha}/label",
                                       data={"csrf": csrf, "label": "megane=yes"})
        assert _files(data_dir, sha) == {f"library/megane/{sha}.png"}
        await review_state.client.post(f"/item/{sha}/label",
                                       data=[("csrf", csrf), ("label", "megane=no"),
                                             ("label", "cat=yes")])
        assert _files(data_dir, sha) == {f"library/cat/{sha}.png"}
        assert await review_state.labels(sha) == [
            ("megane", True, "human", "review-ui"), ("megane", False, "human", "review-ui"),
            ("cat", True, "human", "review-ui")]
        status = await review_state.catalogue.label_counts()
        assert status["cat"] == {"yes": 1, "no": 0}

    @pytest.mark.parametrize("labels", [[], ["megane"], ["megane=maybe"], ["=yes"],
                                        ["../x=yes"], ["<b>=yes"]])
    async def test_bad_labels_are_a_bad_request(self, review_state: ReviewState,
                                                labels: list[str]) -> None:
        """Labels other than TAG=yes|no answer 400 and record nothing."""
        sha = review_state.shas["chelsea"]
        response = await review_state.client.post(
            f"/item/{sha}/label", data=[("label", label) for label in labels],
            headers=review_state.bearer)
        assert response.status == 400
        assert await review_state.labels(sha) == []

    async def test_delete_removes_files_and_blocks_the_hash(
            self, review_state: ReviewState) -> None:
        """POST delete: files gone everywhere, blob and rows rejected, hash blocked."""
        csrf = await review_state.login()
        sha = review_state.shas["coffee"]
        response = await review_state.client.post(f"/item/{sha}/delete", data={"csrf": csrf},
                                                  allow_redirects=False)
        assert response.headers["Location"] == "/quarantine"
        data_dir = review_state.config.data_dir
        assert not list(data_dir.rglob(f"{sha}*"))
        blob = await review_state.catalogue.get_blob(sha)
        assert blob.placement is None and blob.reason == "deleted_by_user"
        row = await review_state.catalogue.fetch_one(
            "SELECT placement FROM blobs WHERE sha256 = ?", (sha,))
        assert row is not None and row["placement"] == "rejected"
        media = await review_state.catalogue.media_for_blob(sha)
        assert {(m.state.value, m.reason) for m in media} == {("rejected", "deleted_by_user")}
        assert sha not in (data_dir / "quarantine" / "index.html").read_text()

    async def test_json_answer_when_asked(self, review_state: ReviewState) -> None:
        """With Accept: application/json an action answers its outcome as JSON."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(
            f"/item/{sha}/release", headers={**review_state.bearer, "Accept": "application/json"})
        document = json.loads(await response.text())
        assert document["placement"] == "library" and document["labels"] == {"nsfw": False}

    @pytest.mark.parametrize("next_url", ["//evil.example/", "https://evil.example/",
                                          "/\\evil.example", "javascript:alert(1)", "held"])
    async def test_next_never_leaves_the_site(self, review_state: ReviewState,
                                              next_url: str) -> None:
        """A `next` that is not a local path falls back to the image page."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.post(
            f"/item/{sha}/release", data={"next": next_url}, headers=review_state.bearer,
            allow_redirects=False)
        assert response.headers["Location"] == f"/item/{sha}"

    @pytest.mark.parametrize("route", POST_ROUTES)
    async def test_actions_on_unknown_images_are_404(self, review_state: ReviewState,
                                                     route: str) -> None:
        """An action on a sha256 that is not filed answers 404."""
        response = await review_state.client.post(route.format(sha=UNKNOWN_SHA),
                                                  data={"label": "megane=yes"},
                                                  headers=review_state.bearer)
        assert response.status == 404

    async def test_get_on_an_action_is_not_allowed(self, review_state: ReviewState) -> None:
        """Actions are POST only: a GET (a link, an <img>) changes nothing."""
        sha = review_state.shas["astronaut"]
        response = await review_state.client.get(f"/item/{sha}/release",
                                                 headers=review_state.bearer)
        assert response.status == 405
        assert await review_state.placement(sha) == "quarantine"


class TestServe:
    async def test_serves_on_loopback_and_prints_the_token_url(
            self, write_config: Callable[..., Config]) -> None:
        """`serve` listens on 127.0.0.1 and its printed URL opens a session."""
        config = write_config(REVIEW_CONFIG)
        async with serving_review(config) as url:
            assert url.startswith("http://megane-") and url.endswith(f"?token={TOKEN}")
            host = URL(url).host
            assert host is not None and host.endswith(".localhost") and len(host) > 40
            connector = aiohttp.TCPConnector(resolver=LocalhostResolver())
            async with (aiohttp.ClientSession(connector=connector) as session,
                        session.get(url) as response):
                assert response.status == 200
                assert str(response.url).endswith("/quarantine")
        assert (config.data_dir / "quarantine" / "index.html").exists()

    def test_short_token_or_bad_port_is_refused(
            self, write_config: Callable[..., Config]) -> None:
        """A --token under 16 characters or an impossible port exits 1 without serving."""
        config = write_config(REVIEW_CONFIG)
        assert run_review(config, 0, "short") == 1
        assert run_review(config, 70000, TOKEN) == 1

    def test_command_line_has_review_and_delete(self) -> None:
        """`megane review --port --token` and `megane delete SHA` parse."""
        parser = build_parser()
        review = parser.parse_args(["review", "--port", "9000", "--token", TOKEN])
        assert (review.port, review.token) == (9000, TOKEN)
        assert parser.parse_args(["review"]).port == 8421
        assert parser.parse_args(["delete", "abc123"]).sha == "abc123"
        assert new_token() != new_token() and len(new_token()) >= 32


def _session_cookie(review_state: ReviewState) -> str | None:
    for cookie in review_state.client.session.cookie_jar:
        if cookie.key == SESSION_COOKIE:
            return cookie.value
    return None


class TestSignIn:
    async def test_token_link_works_once(self, review_state: ReviewState) -> None:
        """A second use of the ?token= link is refused with no cookie; the bearer still works."""
        first = await review_state.client.get(f"/quarantine?token={TOKEN}",
                                              allow_redirects=False)
        assert first.status == 303 and SESSION_COOKIE in first.cookies
        review_state.client.session.cookie_jar.clear()
        second = await review_state.client.get(f"/quarantine?token={TOKEN}",
                                               allow_redirects=False)
        assert second.status == 401
        assert "already used" in await second.text()
        assert "Set-Cookie" not in second.headers
        assert (await review_state.client.get("/quarantine")).status == 401
        bearer = await review_state.client.get("/quarantine", headers=review_state.bearer)
        assert bearer.status == 200

    async def test_sign_in_form_opens_a_session(self, review_state: ReviewState) -> None:
        """GET /login shows a password form; POST /login with the token sets the strict cookie."""
        form = await review_state.client.get("/login")
        assert form.status == 200 and form.content_type == "text/html"
        page = await form.text()
        assert 'type="password" name="token"' in page and 'action="/login"' in page
        response = await review_state.client.post("/login", data={"token": TOKEN},
                                                  allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/quarantine"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie  # host-only: our own name alone
        assert (await review_state.client.get("/quarantine")).status == 200

    async def test_wrong_token_in_the_form_sets_no_cookie(self, review_state: ReviewState) -> None:
        """A wrong token in the form answers 401 with the form again and no cookie."""
        response = await review_state.client.post(
            "/login", data={"token": "wrong-token-0123456789"}, allow_redirects=False)
        assert response.status == 401
        assert "Wrong token" in await response.text() and "Set-Cookie" not in response.headers

    @pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"},
                                         {"Sec-Fetch-Site": "cross-site"}])
    async def test_sign_in_from_another_origin_is_forbidden(
            self, review_state: ReviewState, headers: dict[str, str]) -> None:
        """A sign-in posted from another site answers 403, even with the right token."""
        response = await review_state.client.post("/login", data={"token": TOKEN},
                                                  headers=headers, allow_redirects=False)
        assert response.status == 403 and "Set-Cookie" not in response.headers

    async def test_logout_ends_the_session(self, review_state: ReviewState) -> None:
        """POST /logout with the CSRF token clears the cookie; the old cookie is dead."""
        csrf = await review_state.login()
        cookie = _session_cookie(review_state)
        assert cookie is not None
        page = await (await review_state.client.get("/quarantine")).text()
        assert 'action="/logout"' in page
        response = await review_state.client.post("/logout", data={"csrf": csrf},
                                                  allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/login"
        assert response.cookies[SESSION_COOKIE].value == ""
        review_state.client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
        assert (await review_state.client.get("/quarantine")).status == 401

    async def test_logout_needs_the_csrf_token(self, review_state: ReviewState) -> None:
        """A sign-out without the CSRF token (a cross-site form) answers 403; the session stays."""
        await review_state.login()
        response = await review_state.client.post("/logout", data={"csrf": "wrong"})
        assert response.status == 403
        assert (await review_state.client.get("/quarantine")).status == 200

    async def test_logout_without_a_session_is_a_bad_request(
            self, review_state: ReviewState) -> None:
        """A bearer request has no session to end: 400."""
        response = await review_state.client.post("/logout", headers=review_state.bearer)
        assert response.status == 400


class TestSessionsAndLockOut:
    async def test_idle_session_expires(self, write_config: Callable[..., Config]) -> None:
        """A session lives while used; after session_idle_s without a request it is gone."""
        clock = FakeClock()
        config = write_config(REVIEW_CONFIG + "session_idle_s = 600\n")
        async with review_server(config, clock=clock) as state:
            await state.login()
            for _ in range(3):
                clock.advance(599)
                assert (await state.client.get("/quarantine")).status == 200
            clock.advance(600)
            assert (await state.client.get("/quarantine")).status == 401
            clock.advance(1)
            assert (await state.client.get("/quarantine")).status == 401

    async def test_failed_sign_ins_lock_the_client_out_doubling(
            self, write_config: Callable[..., Config]) -> None:
        """After n failures the client waits 2**(n-1) s (429, Retry-After), the right token too."""
        clock = FakeClock()
        config = write_config(REVIEW_CONFIG + "login_backoff_s = 1\n")
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        async with review_server(config, clock=clock) as state:
            for failures in range(1, 5):
                response = await state.client.get("/quarantine", headers=wrong)
                assert response.status == 401
                locked = await state.client.get("/quarantine", headers=state.bearer)
                assert locked.status == 429
                assert locked.headers["Retry-After"] == str(2 ** (failures - 1))
                for name, value in SECURITY_HEADERS.items():
                    assert locked.headers[name] == value
                clock.advance(2 ** (failures - 1) - 0.5)
                assert (await state.client.get("/quarantine", headers=wrong)).status == 429
                clock.advance(0.5)
            assert (await state.client.get("/quarantine", headers=state.bearer)).status == 200
            # Success resets the count: the next failure locks for 1 s again.
            await state.client.get("/quarantine", headers=wrong)
            locked = await state.client.get("/quarantine", headers=state.bearer)
            assert locked.headers["Retry-After"] == "1"

    @pytest.mark.parametrize("attempt", ["bearer", "link", "form"])
    async def test_every_way_of_signing_in_counts(
            self, write_config: Callable[..., Config], attempt: str) -> None:
        """A wrong token by bearer, link or form locks out the other ways too."""
        clock = FakeClock()
        config = write_config(REVIEW_CONFIG + "login_backoff_s = 30\n")
        async with review_server(config, clock=clock) as state:
            client, wrong = state.client, "wrong-token-0123456789"
            if attempt == "bearer":
                failed = await client.get("/held", headers={"Authorization": f"Bearer {wrong}"})
            elif attempt == "link":
                failed = await client.get(f"/held?token={wrong}", allow_redirects=False)
            else:
                failed = await client.post("/login", data={"token": wrong})
            assert failed.status == 401
            link = await client.get(f"/held?token={TOKEN}", allow_redirects=False)
            form = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
            bearer = await client.get("/held", headers=state.bearer)
            assert [link.status, form.status, bearer.status] == [429, 429, 429]
            assert "Set-Cookie" not in link.headers and "Set-Cookie" not in form.headers
            clock.advance(30)
            assert (await client.get(f"/held?token={TOKEN}")).status == 200

    @pytest.mark.parametrize(("base_s", "failures", "expected_s"), [
        (1.0, 0, 0.0), (1.0, 1, 1.0), (1.0, 2, 2.0), (1.0, 5, 16.0), (1.0, 10, 512.0),
        (1.0, 11, 600.0), (1.0, 10_000, 600.0), (0.01, 3, 0.04), (0.0, 50, 0.0),
    ])
    def test_lock_out_table(self, base_s: float, failures: int, expected_s: float) -> None:
        """The lock-out doubles from login_backoff_s and stops at LOGIN_BACKOFF_MAX_S."""
        assert LoginThrottle(base_s).delay_s(failures) == pytest.approx(expected_s)
        assert LOGIN_BACKOFF_MAX_S == 600.0

    def test_lock_out_is_per_client(self) -> None:
        """One client's failures do not lock out another."""
        throttle = LoginThrottle(5.0)
        throttle.failed("10.0.0.1", 100.0)
        assert throttle.wait_s("10.0.0.1", 101.0) == pytest.approx(4.0)
        assert throttle.wait_s("127.0.0.1", 101.0) == 0.0

    @pytest.mark.parametrize(("table", "key"), [
        ({"session_idle_s": 0}, "session_idle_s"), ({"session_idle_s": "1h"}, "session_idle_s"),
        ({"session_idle_s": True}, "session_idle_s"), ({"login_backoff_s": -1}, "login_backoff_s"),
        ({"login_backoff_s": 601}, "login_backoff_s"),
    ])
    def test_bad_settings_are_config_errors(self, table: dict[str, object], key: str) -> None:
        """Out-of-range session and lock-out settings are refused, naming the key."""
        with pytest.raises(ConfigError, match=f"\\[review\\] {key}"):
            ReviewSettings.from_mapping(table)


class TestTokenSources:
    def test_environment_variable_is_used(self) -> None:
        """With no argument the token comes from MEGANE_REVIEW_TOKEN, without a warning."""
        assert resolve_token(None, None, {"MEGANE_REVIEW_TOKEN": f" {TOKEN}\n"}) == (TOKEN, [])

    def test_token_file_is_read_and_stripped(self, tmp_path: Path) -> None:
        """--token-file PATH (mode 0600) gives the token, its trailing newline dropped."""
        path = tmp_path / "token"
        path.write_text(f"{TOKEN}\n")
        path.chmod(0o600)
        assert resolve_token(None, path, {"MEGANE_REVIEW_TOKEN": "x" * 20}) == (TOKEN, [])

    def test_token_file_readable_by_others_warns(self, tmp_path: Path) -> None:
        """A token file other users can read is used, with a warning naming it and chmod."""
        path = tmp_path / "token"
        path.write_text(TOKEN)
        path.chmod(0o644)
        token, warnings = resolve_token(None, path, {})
        assert token == TOKEN
        assert len(warnings) == 1 and str(path) in warnings[0] and "chmod 600" in warnings[0]

    def test_token_argument_warns_about_proc(self) -> None:
        """--token still works, with a warning that /proc shows it to every local user."""
        token, warnings = resolve_token(TOKEN, None, {})
        assert token == TOKEN and "/proc" in warnings[0] and "MEGANE_REVIEW_TOKEN" in warnings[0]

    def test_no_token_anywhere_makes_one(self) -> None:
        """With no file, argument or variable a new random token is made."""
        first, _ = resolve_token(None, None, {})
        second, _ = resolve_token(None, None, {"MEGANE_REVIEW_TOKEN": ""})
        assert first != second and len(first) >= 32

    @pytest.mark.parametrize(("token", "file_text", "environ", "named"), [
        (TOKEN, TOKEN, {}, "not both"),
        (None, None, {}, "cannot read"),
        (None, "short\n", {}, "--token-file .*: the token must be at least 16"),
        (None, "two words 0123456789", {}, "--token-file .*: the token must not contain"),
        ("short", "", {}, "--token: the token must be at least 16"),
        (None, "", {"MEGANE_REVIEW_TOKEN": "short"}, "MEGANE_REVIEW_TOKEN: the token"),
    ])
    def test_bad_tokens_are_refused_naming_the_source(
            self, tmp_path: Path, token: str | None, file_text: str | None,
            environ: dict[str, str], named: str) -> None:
        """Both sources, an unreadable file, a short or spaced token: an error naming where.

        `file_text` "" means no --token-file, None a --token-file that does not exist.
        """
        path: Path | None = tmp_path / "token"
        assert path is not None
        if file_text:
            path.write_text(file_text)
        elif file_text == "":
            path = None
        with pytest.raises(TokenError, match=named):
            resolve_token(token, path, environ)

    def test_run_review_reports_a_missing_token_file(
            self, write_config: Callable[..., Config], tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        """`megane review --token-file missing` exits 1 naming the file, serving nothing."""
        missing = tmp_path / "no-such-token"
        assert run_review(write_config(REVIEW_CONFIG), 0, None, token_file=missing) == 1
        assert str(missing) in capsys.readouterr().err

    def test_command_line_takes_a_token_file(self) -> None:
        """`megane review --token-file PATH` parses to a Path."""
        args = build_parser().parse_args(["review", "--token-file", "/run/megane/token"])
        assert args.token_file == Path("/run/megane/token") and args.token is None


class TestQueues:
    async def test_queue_shows_undecided_and_confirmed_has_its_own_view(
            self, review_state: ReviewState) -> None:
        """After a confirm the image leaves the default queue for /quarantine/confirmed."""
        confirmed, undecided = review_state.shas["coffee"], review_state.shas["astronaut"]
        response = await review_state.client.post(f"/item/{confirmed}/confirm",
                                                  headers=review_state.bearer)
        assert response.status == 200
        assert await review_state.placement(confirmed) == "quarantine"
        queue = await (await review_state.client.get("/quarantine",
                                                     headers=review_state.bearer)).text()
        assert f'id="card-{undecided}"' in queue and f'id="card-{confirmed}"' not in queue
        assert "<b>To decide (1)</b>" in queue
        assert '<a href="/quarantine/confirmed">Confirmed (1)</a>' in queue
        view = await (await review_state.client.get("/quarantine/confirmed",
                                                    headers=review_state.bearer)).text()
        assert f'id="card-{confirmed}"' in view and f'id="card-{undecided}"' not in view
        assert "<b>Confirmed (1)</b>" in view
        item = await (await review_state.client.get(f"/item/{confirmed}",
                                                    headers=review_state.bearer)).text()
        assert '<a href="/quarantine/confirmed">back to quarantine/confirmed</a>' in item
        index = (review_state.config.data_dir / "quarantine" / "index.html").read_text()
        assert confirmed in index and undecided in index  # the sheet lists all quarantine

    async def test_released_label_does_not_count_as_confirmed(
            self, review_state: ReviewState) -> None:
        """A megane=yes label on a quarantined image leaves it undecided (not a quarantine tag)."""
        sha = review_state.shas["astronaut"]
        await review_state.client.post(f"/item/{sha}/label", data={"label": "megane=yes"},
                                       headers=review_state.bearer)
        queue = await (await review_state.client.get("/quarantine",
                                                     headers=review_state.bearer)).text()
        assert f'id="card-{sha}"' in queue

    async def test_filters_apply_to_the_confirmed_view(self, review_state: ReviewState) -> None:
        """The score filter narrows the confirmed view like the queue."""
        for name in ("coffee", "astronaut"):
            await review_state.client.post(f"/item/{review_state.shas[name]}/confirm",
                                           headers=review_state.bearer)
        view = await (await review_state.client.get("/quarantine/confirmed?min=0.9",
                                                    headers=review_state.bearer)).text()
        assert f'id="card-{review_state.shas["astronaut"]}"' in view
        assert f'id="card-{review_state.shas["coffee"]}"' not in view


HIDDEN_URLS = [
    "javascript:alert(1)", "data:text/html,<b>x</b>", "file:///etc/passwd",
    "http://127.0.0.1:9/steal", "http://localhost:8080/", "http://foo.localhost/",
    "http://192.168.1.1/admin", "http://10.0.0.1/", "http://[::1]:8421/", "http://169.254.169.254/",
    "http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/", "ftp://a.example/x",
    "https://a.example/" + "x" * 5000,
]


class TestTextFromSources:
    @pytest.mark.parametrize("url", HIDDEN_URLS)
    async def test_unsafe_urls_are_text_not_links(self, review_state: ReviewState,
                                                  url: str) -> None:
        """Non-http(s), loopback, private, link-local and over-long URLs are shown as text."""
        sha = await store_photo(review_state.catalogue, review_state.layout, review_state.config,
                                photo("camera"), url="https://c.example/1.jpg",
                                scores={"nsfw": 0.99}, post_url=url)
        page = await (await review_state.client.get(
            f"/item/{sha}", headers=review_state.bearer)).text()
        assert page.count('href="/leave?') == 1  # the media URL only
        assert 'class="unlinked"' in page
        assert html.escape(url[:100]) in page
        assert f'href="{html.escape(url)}' not in page

    async def test_public_urls_open_through_the_interstitial(
            self, review_state: ReviewState) -> None:
        """Media and post links go to /leave in a new tab, no opener, no referrer."""
        sha = review_state.shas["astronaut"]
        page = await (await review_state.client.get(
            f"/item/{sha}", headers=review_state.bearer)).text()
        links = re.findall(r'<a href="(/leave\?[^"]+)" target="_blank" '
                           r'rel="noopener noreferrer">([^<]+)</a>', page)
        assert [text for _href, text in links] == ["https://a.example/1.jpg",
                                                   "https://a.example/post/1"]
        assert 'href="https://a.example' not in page
        leave = await review_state.client.get(html.unescape(links[1][0]),
                                              headers=review_state.bearer)
        assert leave.status == 200
        assert leave.headers["Referrer-Policy"] == "no-referrer"
        text = await leave.text()
        assert ('<a href="https://a.example/post/1" target="_blank" '
                'rel="noopener noreferrer">') in text
        assert "<b>a.example</b>" in text

    @pytest.mark.parametrize("url", ["http://127.0.0.1:9/steal", "javascript:alert(1)"])
    async def test_interstitial_refuses_unsafe_urls(self, review_state: ReviewState,
                                                    url: str) -> None:
        """/leave with a loopback or script URL shows it as text with no onward link."""
        response = await review_state.client.get("/leave", params={"url": url},
                                                 headers=review_state.bearer)
        text = await response.text()
        assert response.status == 200 and "Not opened" in text
        assert 'target="_blank"' not in text and html.escape(url) in text

    async def test_interstitial_without_url_is_a_bad_request(
            self, review_state: ReviewState) -> None:
        """/leave with no url answers 400."""
        response = await review_state.client.get("/leave", headers=review_state.bearer)
        assert response.status == 400

    @pytest.mark.parametrize("control", sorted(BIDI_CONTROLS))
    async def test_bidi_controls_are_shown_not_obeyed(self, review_state: ReviewState,
                                                      control: str) -> None:
        """Bidi controls in authors, tags and sources appear as [U+XXXX] marks on every page."""
        sha = await store_photo(
            review_state.catalogue, review_state.layout, review_state.config, photo("camera"),
            url="https://c.example/1.jpg", scores={"nsfw": 0.99},
            source=f"feed{control}x", author=f"evil{control}gpj.exe",
            tags=(f"cat{control}dog",))
        mark = f"[U+{ord(control):04X}]"
        for path in (f"/item/{sha}", "/quarantine"):
            page = await (await review_state.client.get(
                path, headers=review_state.bearer)).text()
            assert control not in page
            assert f"feed{mark}x" in page
        item = await (await review_state.client.get(
            f"/item/{sha}", headers=review_state.bearer)).text()
        assert f"evil{mark}gpj.exe" in item and f"cat{mark}dog" in item

    async def test_huge_fields_are_capped_on_the_page(self, review_state: ReviewState) -> None:
        """A 200,000-character author and tag list make a page of tens of KB, not 800 KB."""
        sha = await store_photo(
            review_state.catalogue, review_state.layout, review_state.config, photo("camera"),
            url="https://c.example/1.jpg", scores={"nsfw": 0.99}, author="A" * 200_000,
            tags=tuple(f"tag{index}" for index in range(20_000)),
            post_url="https://c.example/" + "p" * 200_000)
        page = await (await review_state.client.get(
            f"/item/{sha}", headers=review_state.bearer)).text()
        assert len(page.encode()) < 30_000
        # Stored cut at 256 characters (storage.untrusted), shown cut at 200.
        assert "A" * 200 + "… (+" in page and "A" * 201 not in page
        assert "tag0, tag1" in page


class TestDisplayFilters:
    @pytest.mark.parametrize(("text", "expected"), [
        ("plain", "plain"), ("a\u202eb", "a[U+202E]b"), ("\u2066x\u2069", "[U+2066]x[U+2069]"),
        ("\u200e\u200f\u061c", "[U+200E][U+200F][U+061C]"), ("日本語", "日本語"),
    ])
    def test_neutralise_bidi(self, text: str, expected: str) -> None:
        """Each bidi control becomes a visible mark; other text is unchanged."""
        assert neutralise_bidi(text) == expected

    @pytest.mark.parametrize(("text", "limit", "expected"), [
        ("short", 10, "short"), ("x" * 10, 10, "x" * 10), ("x" * 12, 10, "x" * 10 + "… (+2 chars)"),
        (None, 10, ""),
    ])
    def test_clip(self, text: str | None, limit: int, expected: str) -> None:
        """Text over the limit is cut and says how much was left out."""
        assert clip(text, limit) == expected

    @pytest.mark.parametrize("url", [*HIDDEN_URLS, "", "http://", "https://a.example/\u202e"])
    def test_unlinkable_urls(self, url: str) -> None:
        """Only public http(s) URLs of sane length are links."""
        assert not linkable_url(url)

    @pytest.mark.parametrize("url", ["https://a.example/post/1", "http://b.example:8080/x?y=1",
                                     "https://[2001:4860:4860::8888]/"])
    def test_linkable_urls(self, url: str) -> None:
        """Public http(s) URLs are links."""
        assert linkable_url(url)


class TestImageTypeFromBytes:
    async def test_type_comes_from_the_bytes_not_the_catalogue(
            self, review_state: ReviewState) -> None:
        """A stored .jpg whose bytes are PNG is served as image/png, with nosniff."""
        sha = review_state.shas["astronaut"]
        review_state.layout.store_file(sha, ".jpg").write_bytes(photo("astronaut", "PNG"))
        response = await review_state.client.get(f"/image/{sha}", headers=review_state.bearer)
        assert response.status == 200 and response.content_type == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    @pytest.mark.parametrize("data", [b"<html><script>alert(1)</script></html>", b"",
                                      b"%PDF-1.7\n", b"\x00" * 64])
    async def test_a_stored_file_that_is_no_image_is_not_served(
            self, review_state: ReviewState, data: bytes) -> None:
        """Bytes that are no known image answer 404 as text, never their own content."""
        sha = review_state.shas["astronaut"]
        review_state.layout.store_file(sha, ".jpg").write_bytes(data)
        response = await review_state.client.get(f"/image/{sha}", headers=review_state.bearer)
        assert response.status == 404 and response.content_type == "text/plain"
        body = await response.text()
        assert "<script" not in body and "is not an image" in body
        assert f"store/{sha[:2]}/{sha}.jpg" in body  # the real path, under data_dir

    @pytest.mark.parametrize(("image_format", "expected"), [
        ("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
        ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("TIFF", "image/tiff"),
    ])
    def test_content_type_table(self, image_format: str, expected: str) -> None:
        """Real encoded images of each common format get their image/* type."""
        assert image_content_type(photo("coffee", image_format)) == expected

    def test_every_sniffed_format_has_a_media_type(self) -> None:
        """Every format sniffing can name has an image/* media type of its own."""
        from classifier.sniff import EXTENSIONS, MEDIA_TYPES

        assert set(MEDIA_TYPES) == set(EXTENSIONS)
        assert all(value.startswith("image/") for value in MEDIA_TYPES.values())

    def test_a_fresh_process_serves_the_type(self, tmp_path: Path) -> None:
        """In a new process (Pillow's registry not yet initialised) a JPEG is image/jpeg."""
        path = tmp_path / "photo.jpg"
        path.write_bytes(photo("coffee", "JPEG"))
        script = ("import sys; from crawler.review.app import image_content_type as f; "
                  "print(f(open(sys.argv[1], 'rb').read()))")
        completed = subprocess.run([sys.executable, "-c", script, str(path)],
                                   cwd=Path(__file__).resolve().parent.parent,
                                   capture_output=True, text=True, timeout=120, check=True)
        assert completed.stdout.strip() == "image/jpeg"


class TestPrintedLink:
    """The real `megane review` process: what it prints for each source of the token."""

    @pytest.mark.parametrize("given", ["token-file", "environment", "generated"])
    async def test_a_given_token_is_never_printed(
            self, write_config: Callable[..., Config], tmp_path: Path, given: str) -> None:
        """A token from --token-file or MEGANE_REVIEW_TOKEN is never printed: the link is the
        sign-in form, where that token opens a session; a made-up one is in a one-time link."""
        config = write_config(REVIEW_CONFIG)
        DataLayout(config.data_dir).ensure()  # review needs an existing data_dir
        token_file = tmp_path / "review-token"
        token_file.write_text(f"{TOKEN}\n")
        token_file.chmod(0o600)
        environment = {key: value for key, value in os.environ.items()
                       if key != "MEGANE_REVIEW_TOKEN"}
        environment["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        argv = ["-m", "crawler.cli", "review", "--config", str(config.path), "--port", "0"]
        if given == "token-file":
            argv += ["--token-file", str(token_file)]
        elif given == "environment":
            environment["MEGANE_REVIEW_TOKEN"] = TOKEN
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=environment, cwd=tmp_path)
        assert process.stdout is not None and process.stderr is not None
        try:
            first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            second = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert first.startswith("megane review: open http://megane-"), first
            url = URL(first.removeprefix("megane review: open ").strip())
            connector = aiohttp.TCPConnector(resolver=LocalhostResolver())
            async with aiohttp.ClientSession(connector=connector) as session:
                if given == "generated":
                    token = url.query["token"]
                    assert url.path == "/quarantine" and len(token) >= 32
                    assert "signs in once" in second
                    async with session.get(url) as response:
                        assert response.status == 200 and response.url.path == "/quarantine"
                    return
                assert TOKEN not in first + second and "token=" not in first
                assert url.path == "/login" and not url.query
                source = "MEGANE_REVIEW_TOKEN" if given == "environment" else str(token_file)
                assert "sign in with the token from " in second and source in second
                async with session.get(url) as form:
                    assert form.status == 200 and 'name="token"' in await form.text()
                origin = f"http://{url.host}:{url.port}"
                async with session.post(url, data={"token": TOKEN},
                                        headers={"Origin": origin}) as signed_in:
                    assert signed_in.status == 200 and signed_in.url.path == "/quarantine"
        finally:
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 60) == 0
            rest = (await process.stdout.read() + await process.stderr.read()).decode()
            assert TOKEN not in rest
