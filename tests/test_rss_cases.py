"""The rss cases of issue 11 (tests/cases/<name>/): each feed through the real RSS source.

Each case's site is served by a local aiohttp server; the source polls it through the real
Fetcher, and the media it yields must be the README's right result. Pictures the case's
site really serves are fetched too, to show they are the post's pictures (200, image/*).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from structlog.testing import capture_logs

from crawler.config import SourceConfig
from crawler.sources import rss
from crawler.sources.base import SourceContext
from tests.rss_sites import site_app
from tests.sourcehttp import RecordingClient, http_client, serve

CASES = Path(__file__).parent / "cases"


def make_source(url: str, http: RecordingClient) -> rss.RssSource:
    config = SourceConfig(kind="rss", name="feed", interval_s=60,
                          settings=MappingProxyType({"url": url}))
    source = rss.create(config, SourceContext(http=http, user_agent="megane-test/1"))
    assert isinstance(source, rss.RssSource)
    return source


async def poll_case(name: str, feed_path: str) -> tuple[str, rss.PollResult, list[dict]]:
    """Serve the case's site, poll its feed once; (base URL, result, captured log events)."""
    async with serve(site_app(CASES / name / "site")) as base, http_client(base) as http:
        with capture_logs() as logs:
            result = await make_source(f"{base}{feed_path}", http).poll(None, now=0.0)
        for ref in result.refs:
            if ref.url.startswith(base):
                document = await http.get_document(ref.url)
                assert document.status == 200, ref.url
                assert document.headers["Content-Type"].startswith("image/")
    return base, result, logs


class TestRssCases:
    async def test_lazy_loaded_img(self) -> None:
        """data-src / data-lazy-src name the pictures; the data: GIF and 1x1 placeholder do not."""
        base, result, logs = await poll_case("rss_lazy_loaded_img", "/feed.xml")
        assert [ref.url for ref in result.refs] == [f"{base}/img/real-one.jpg",
                                                    f"{base}/img/real-two.jpg"]
        (dropped,) = [entry for entry in logs if entry["event"] == "feed_images_dropped"]
        assert dropped["counts"] == {"lazy_placeholder": 2}

    async def test_atom_content_xml_base(self) -> None:
        """An xml:base on <content> wins over the entry's link for the images inside it."""
        base, result, _ = await poll_case("atom_content_xml_base", "/feed.atom")
        assert [ref.url for ref in result.refs] == [
            f"{base}/blog/2024/05/linked-post/diagram.jpg"]

    async def test_fullwidth_netloc(self) -> None:
        """An unparsable URL in one item costs that URL; the poll and the good item survive.

        The unparsable URL is yielded as written, for the pipeline to reject as `bad_url`.
        """
        base, result, _ = await poll_case("rss_fullwidth_netloc_kills_feed", "/feed.xml")
        assert [ref.url for ref in result.refs] == [
            f"{base}/img/today.jpg", "http://img.example.jp\uff1a8080/old/photo.jpg"]
        assert result.cursor is not None

    async def test_thumbnails_smallest_first(self) -> None:
        """Of several thumbnails, the largest declared one is the item's picture."""
        _, result, _ = await poll_case("rss_thumbnails_smallest_first", "/feed.xml")
        assert [ref.url for ref in result.refs] == [
            "https://img.example.org/frameshop/101_1280.jpg",
            "https://img.example.org/frameshop/102_960.jpg"]

    async def test_feedflare_share_buttons(self) -> None:
        """Feed-flare share buttons and tracking pixels are dropped, and the log says so."""
        _, result, logs = await poll_case("rss_feedflare_share_buttons", "/feed.atom")
        assert [ref.url for ref in result.refs] == [
            "https://blog.example.org/images/2025/03/bench-test.jpg",
            "https://blog.example.org/images/2025/03/walnut-frame.jpg"]
        (dropped,) = [entry for entry in logs if entry["event"] == "feed_images_dropped"]
        assert dropped["counts"] == {"feedflare": 6, "tracking_pixel": 3}
        assert {"url": "https://feeds.example.org/~ff/ExampleLensLab?d=V7sNwa",
                "why": "feedflare"} in dropped["dropped"]

    async def test_keywords_wrapped_lines(self) -> None:
        """media:keywords wrapped over lines become tags with inner whitespace collapsed."""
        _, result, _ = await poll_case("rss_keywords_wrapped_lines", "/feed.xml")
        assert [ref.url for ref in result.refs] == [
            f"https://img.example.org/full/{number}.jpg" for number in (7001, 7002, 7003)]
        assert result.refs[0].tags == (
            "eyewear", "round frames", "red frames", "reading", "reading room",
            "window light", "wool scarf", "book stack", "original art", "half rim frames")
        assert "chestnut curls" in result.refs[1].tags
        assert "clear afternoon" in result.refs[2].tags
        assert all("\n" not in tag and "\t" not in tag
                   for ref in result.refs for tag in ref.tags)

    async def test_itunes_item_image(self) -> None:
        """Each episode's itunes:image is its picture; the show's logo is no episode's."""
        _, result, _ = await poll_case("rss_itunes_item_image", "/feed.xml")
        assert [ref.url for ref in result.refs] == [
            "https://cdn.example.org/podcast/episodes/42-cover-full.jpg?v=2",
            "https://cdn.example.org/podcast/episodes/41-cover-full.jpg?v=2",
            "https://cdn.example.org/podcast/episodes/40-cover-full.jpg?v=1"]
        assert result.refs[0].post_url == "https://podcast.example.org/episodes/42"

