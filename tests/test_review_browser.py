"""End to end: a reviewer in headless Chromium releases one image and labels another.

Drives Debian's chromium through chromedriver (W3C WebDriver over aiohttp, see
tests/webdriver.py) against the real `megane review` server, then checks the catalogue
and the folders. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler.config import Config
from crawler.review.security import SESSION_COOKIE
from storage.catalogue import Catalogue
from tests.conftest import photo
from tests.review_fixtures import (
    REVIEW_CONFIG,
    filed_catalogue,
    serving_review,
    store_photo,
)
from tests.webdriver import Browser, chromium, find_browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_browser() is None,
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver)"),
]


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str,
                   timeout_s: float = 15.0) -> None:
    """Poll `condition` until true: the browser navigates on its own after a key press."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def current_card(browser: Browser) -> str | None:
    cards = await browser.find_all(".card.current")
    return await browser.attribute(cards[0], "data-sha") if cards else None


async def save_screenshot(browser: Browser, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(await browser.screenshot())
    return path


class TestReviewInChromium:
    async def test_release_one_and_label_another(
            self, write_config: Callable[..., Config], tmp_path: Path) -> None:
        """Unblur and release with the keyboard, label with keys; catalogue and folders agree."""
        config = write_config(REVIEW_CONFIG)
        async with filed_catalogue(config) as (catalogue, _layout, shas):
            released, labelled = shas["astronaut"], shas["chelsea"]
            async with serving_review(config) as url, chromium(tmp_path) as browser:
                await self._review(browser, url, catalogue, released, labelled)
        data_dir = config.data_dir
        assert not (data_dir / "quarantine" / f"{released}.jpg").exists()
        assert (data_dir / "library" / "untagged" / f"{released}.jpg").exists()
        assert (data_dir / "library" / "megane" / f"{labelled}.png").exists()
        assert not (data_dir / "library" / "untagged" / f"{labelled}.png").exists()
        assert released not in (data_dir / "quarantine" / "index.html").read_text()
        assert (ARTIFACTS / "review-quarantine.png").stat().st_size > 1000
        assert (ARTIFACTS / "review-library.png").stat().st_size > 1000

    async def _review(self, browser: Browser, url: str, catalogue: Catalogue,
                      released: str, labelled: str) -> None:
        async def placement(sha: str) -> str | None:
            row = await catalogue.fetch_one(
                "SELECT placement FROM blobs WHERE sha256 = ?", (sha,))
            return row["placement"] if row else None

        async def human_labels(sha: str) -> list[tuple[str, bool, str]]:
            rows = await catalogue.fetch_all(
                "SELECT tag, value, who FROM labels WHERE sha256 = ? AND origin = 'human'",
                (sha,))
            return [(row["tag"], bool(row["value"]), row["who"]) for row in rows]

        # The token URL opens a session and drops the token from the address bar.
        await browser.get(url)
        assert "token=" not in await browser.current_url()
        thumb = await browser.find(f"#card-{released} a.blurred img")
        assert str(await browser.property(thumb, "src")).endswith(f"/thumb/{released}")

        # A click unblurs that one image (and selects its card); the others stay blurred.
        await browser.click(await browser.find(f"#card-{released} a.blurred"))
        image = await browser.find(f"#card-{released} img")
        assert str(await browser.property(image, "src")).endswith(f"/image/{released}")
        assert await browser.find_all("a.blurred")  # the other quarantined photo
        assert await current_card(browser) == released
        await save_screenshot(browser, "review-quarantine.png")

        # r releases the selected image.
        await browser.press("r")

        async def released_done() -> bool:
            return (await placement(released) == "library"
                    and not await browser.find_all(f"#card-{released}"))

        await wait_for(released_done, "the release")
        assert await human_labels(released) == [("nsfw", False, "review-ui")]

        # In the library: j to the cat photo, choose the tag megane by its number, y.
        await browser.click(await browser.find("header nav a[href='/library']"))
        await wait_for(lambda: _on(browser, "/library"), "the library page")
        for _ in range(5):
            if await current_card(browser) == labelled:
                break
            await browser.press("j")
        assert await current_card(browser) == labelled
        tags = (await browser.attribute(await browser.find("body"), "data-tags") or "").split(",")
        await browser.press(str(tags.index("megane") + 1))
        assert await browser.text(await browser.find("#current-tag")) == "megane"
        await browser.press("y")

        async def labelled_done() -> bool:
            return ("megane", True, "review-ui") in await human_labels(labelled)

        await wait_for(labelled_done, "the label")
        await wait_for(lambda: _has(browser, f"#card-{labelled} .labels .yes"),
                       "the label on the page")
        assert await current_card(browser) == labelled  # the selection survived the reload
        await save_screenshot(browser, "review-library.png")


async def _on(browser: Browser, path: str) -> bool:
    return (await browser.current_url()).split("?")[0].endswith(path)


async def _has(browser: Browser, css: str) -> bool:
    return bool(await browser.find_all(css))


class TestOwnOrigin:
    async def test_session_cookie_never_reaches_other_local_services(
            self, write_config: Callable[..., Config], tmp_path: Path) -> None:
        """Signed in, Chromium sends the session cookie to no page on 127.0.0.1 or localhost."""
        seen: list[tuple[str, str]] = []

        async def other_service(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Cookie", "")))
            response = web.Response(text="another local service")
            response.set_cookie("probe", "1", path="/")
            return response

        app = web.Application()
        app.router.add_get("/{path:.*}", other_service)
        other = TestServer(app, host="127.0.0.1")
        await other.start_server()
        assert other.port is not None
        config = write_config(REVIEW_CONFIG)
        try:
            async with filed_catalogue(config) as (catalogue, layout, shas):
                hostile = await store_photo(
                    catalogue, layout, config, photo("camera"), url="https://c.example/5.jpg",
                    scores={"nsfw": 0.99}, post_url=f"http://127.0.0.1:{other.port}/steal")
                async with serving_review(config) as url, chromium(tmp_path) as browser:
                    await browser.get(url)
                    assert await browser.find_all(".card")  # signed in
                    for target in (f"http://127.0.0.1:{other.port}/first",
                                   f"http://127.0.0.1:{other.port}/second",
                                   f"http://localhost:{other.port}/third"):
                        await browser.get(target)
                    review = url.split("/quarantine")[0]
                    await self._links(browser, review, hostile, shas["astronaut"], other.port)
        finally:
            await other.close()
        cookies = dict(seen)
        assert {"/first", "/second", "/third"} <= set(cookies)  # and /favicon.ico
        assert "probe=1" in cookies["/second"]  # the browser does send that host's cookies
        assert all(SESSION_COOKIE not in header for _path, header in seen)

    async def _links(self, browser: Browser, review: str, hostile: str, astronaut: str,
                     other_port: int) -> None:
        # The session still works on the UI's own name.
        await browser.get(f"{review}/item/{hostile}")
        assert await browser.find_all("table")
        # A post link to a loopback address is text, never a link.
        assert not await browser.find_all(f"a[href*='{other_port}']")
        unlinked = await browser.find_all("span.unlinked")
        texts = [await browser.text(element) for element in unlinked]
        assert any(f"127.0.0.1:{other_port}" in text for text in texts)
        # A public post link opens the interstitial in a new tab, where the session holds.
        await browser.get(f"{review}/item/{astronaut}")
        link = await browser.find("a[href^='/leave?'][href*='post']")
        assert await browser.attribute(link, "target") == "_blank"
        assert await browser.attribute(link, "rel") == "noopener noreferrer"
        before = set(await browser.command("GET", "/window/handles"))
        await browser.click(link)

        async def new_tab() -> bool:
            return len(set(await browser.command("GET", "/window/handles")) - before) == 1

        await wait_for(new_tab, "the interstitial's tab")
        handle = (set(await browser.command("GET", "/window/handles")) - before).pop()
        await browser.command("POST", "/window", {"handle": handle})
        await wait_for(lambda: _has(browser, "a[rel='noopener noreferrer'][target='_blank']"),
                       "the interstitial page")
        onward = await browser.find("main a[target='_blank']")
        assert await browser.attribute(onward, "href") == "https://a.example/post/1"
        assert "a.example" in await browser.text(await browser.find("main b"))
