"""The review web UI's HTTP surface: Host check, auth, CSRF, headers, images, actions."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from crawler.cli import build_parser
from crawler.config import Config
from crawler.review.security import SECURITY_HEADERS, SESSION_COOKIE
from crawler.review.server import new_token, run_review, serve
from tests.review_fixtures import (  # noqa: F401
    REVIEW_CONFIG,
    REVIEW_HOST,
    TOKEN,
    LocalhostResolver,
    ReviewState,
    review_state_fixture,
)

GET_ROUTES = ["/", "/quarantine", "/held", "/library", "/library?tag=untagged",
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
        assert "421" in await response.text()

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
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as group:
            group.create_task(serve(config, 0, TOKEN, stop, ready=ready.set_result))
            try:
                url = await asyncio.wait_for(ready, 30)
                assert url.startswith("http://megane-") and url.endswith(f"?token={TOKEN}")
                host = URL(url).host
                assert host is not None and host.endswith(".localhost") and len(host) > 40
                connector = aiohttp.TCPConnector(resolver=LocalhostResolver())
                async with (aiohttp.ClientSession(connector=connector) as session,
                            session.get(url) as response):
                    assert response.status == 200
                    assert str(response.url).endswith("/quarantine")
            finally:
                stop.set()
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
