"""Pictures in feed HTML: lazy loaders, srcset, the not-a-picture rule, rendition identity."""

from __future__ import annotations

import time

import pytest

from crawler.sources.html_images import (
    MAX_OPEN_CONTAINERS,
    html_images,
    largest_candidate,
    not_a_picture,
    picture_identity,
    srcset_candidates,
)

GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="


class TestHtmlImages:
    @pytest.mark.parametrize(("html", "url", "placeholder"), [
        ('<img src="a.jpg">', "a.jpg", None),
        (f'<img src="{GIF}" data-src="real.jpg">', "real.jpg", GIF),
        ('<img src="spacer.gif" data-lazy-src="real.jpg">', "real.jpg", "spacer.gif"),
        ('<img src="grey.gif" data-original="real.jpg">', "real.jpg", "grey.gif"),
        ('<img data-src="only.jpg">', "only.jpg", None),
        ('<img src="s.jpg" srcset="s.jpg 300w, l.jpg 1200w, m.jpg 800w">', "l.jpg", None),
        ('<img src="a.jpg" srcset="a.jpg 1x, a@2x.jpg 2x">', "a@2x.jpg", None),
        (f'<img src="{GIF}" data-srcset="x.jpg 640w, y.jpg 1280w" data-src="x.jpg">',
         "y.jpg", GIF),
        ('<img src="m.jpg?w=1024" data-orig-file="orig.jpg" srcset="m.jpg?w=2048 2048w">',
         "orig.jpg", None),
        (f'<img src="{GIF}" data-src="data:image/png;base64,AA">', GIF, None),
        (('<img srcset="https://c.example/w_400,c_limit/a.jpg 400w, '
         'https://c.example/w_800,c_limit/a.jpg 800w">'),
         "https://c.example/w_800,c_limit/a.jpg", None),
    ], ids=["src", "data-src", "data-lazy-src", "data-original", "data-src-only", "srcset-w",
            "srcset-x", "data-srcset-wins", "jetpack-original", "all-inline-data",
            "commas-in-srcset-urls"])
    def test_source_chosen(self, html: str, url: str, placeholder: str | None) -> None:
        """Each lazy-loading shape gives the picture a browser would show, and its placeholder."""
        (image,) = html_images(html)
        assert (image.url, image.placeholder) == (url, placeholder)

    def test_context_recorded(self) -> None:
        """An image knows its declared size, its link and the classes around it."""
        (image,) = html_images('<div class="feedflare"><p><a href="https://s.example/x">'
                               '<img src="b.png" width="20px" height=" 16 " class="i">'
                               "</a></p></div>")
        assert (image.width, image.height, image.link) == (20, 16, "https://s.example/x")
        assert image.containers == ("feedflare",) and image.classes == "i"

    def test_closed_container_forgotten(self) -> None:
        """An image after a share container has closed is not inside it."""
        images = html_images('<div class="sharedaddy"><img src="a.png"></div><img src="b.jpg">')
        assert [image.containers for image in images] == [("sharedaddy",), ()]

    def test_hostile_nesting_is_linear(self) -> None:
        """Thousands of unclosed classed elements and stray end tags are read in bounded time."""
        hostile = '<div class="a">' * 30_000 + "</span>" * 30_000 + '<img src="x.jpg">'
        started = time.monotonic()
        (image,) = html_images(hostile)
        assert time.monotonic() - started < 2.0
        assert len(image.containers) == MAX_OPEN_CONTAINERS

    def test_empty_sources_skipped(self) -> None:
        """An <img> with no source at all gives nothing."""
        assert html_images('<img src=""><img src="  "><img alt="x">') == []


class TestNotAPicture:
    @pytest.mark.parametrize(("url", "attributes", "reason"), [
        ("https://feeds.feedburner.com/~ff/Blog?d=yIl2AUoC8zA", {}, "feedflare"),
        ("https://feeds.example.org/~f/Blog?i=1", {}, "feedflare"),
        ("http://feeds.feedburner.com/~r/Blog/~4/AbC", {}, "tracking_pixel"),
        ("https://example.org/t.gif", {"width": 1, "height": 1}, "tracking_pixel"),
        ("https://example.org/t.gif", {"width": 0}, "tracking_pixel"),
        ("https://pixel.wp.com/b.gif?blog=1", {}, "tracking_pixel"),
        ("https://medium.com/_/stat?event=post.clientViewed", {}, "tracking_pixel"),
        ("https://secure.gravatar.com/avatar/abc?s=96", {}, "avatar"),
        ("https://example.org/me.jpg", {"classes": "avatar avatar-96 photo"}, "avatar"),
        ("https://s.w.org/images/core/emoji/15.0.3/72x72/1f600.png", {}, "emoji"),
        ("https://example.org/a.png", {"classes": "wp-smiley"}, "emoji"),
        ("https://example.org/rss.png", {"width": 16, "height": 16}, "icon"),
        ("https://example.org/rss.png", {"width": 32}, "icon"),
        ("https://example.org/tw.png", {"link": "https://twitter.com/intent/tweet?u=1"},
         "share_button"),
        ("https://example.org/fb.png", {"link": "https://www.facebook.com/sharer/sharer.php"},
         "share_button"),
        ("https://example.org/x.png", {"containers": ("post", "sd-sharing sharedaddy")},
         "share_button"),
        ("https://example.org/x.png", {"containers": ("feedflare",)}, "feedflare"),
        ("https://example.org/photo.jpg", {"width": 33, "height": 33}, None),
        ("https://example.org/photo.jpg", {"width": 640, "height": 1}, "tracking_pixel"),
        ("https://example.org/photo.jpg", {"link": "https://example.org/photo-full.jpg"}, None),
        ("https://example.org/shared/photo.jpg", {"classes": "shared-photo"}, None),
        ("data:image/png;base64,AAAA", {}, None),
        ("file:///etc/passwd", {}, None),
    ])
    def test_rule(self, url: str, attributes: dict[str, object], reason: str | None) -> None:
        """Each row of the rule drops what it names, with its reason; pictures pass."""
        assert not_a_picture(url, **attributes) == reason  # type: ignore[arg-type]


class TestSrcset:
    @pytest.mark.parametrize(("value", "candidates"), [
        ("a.jpg 1x, b.jpg 2x", [("a.jpg", 1.0, "x"), ("b.jpg", 2.0, "x")]),
        ("a.jpg", [("a.jpg", 1.0, "x")]),
        ("a.jpg,b.jpg 300w", [("a.jpg,b.jpg", 300.0, "w")]),
        ("a.jpg, b.jpg 300w", [("a.jpg", 1.0, "x"), ("b.jpg", 300.0, "w")]),
        (" , ,a.jpg 300w , ", [("a.jpg", 300.0, "w")]),
        ("a.jpg 300w 200h", [("a.jpg", 300.0, "w")]),
        ("a.jpg bogus", [("a.jpg", 1.0, "x")]),
        ("", []),
    ])
    def test_candidates(self, value: str, candidates: list[tuple[str, float, str]]) -> None:
        """Candidates are read as HTML reads them: URL to whitespace, descriptors to a comma."""
        assert srcset_candidates(value) == candidates

    def test_largest_skips_inline_data(self) -> None:
        """A srcset of only data: placeholders has no candidate."""
        assert largest_candidate(f"{GIF} 1x") is None
        assert largest_candidate(f"{GIF} 1x, b.jpg 2x") == ("b.jpg", None)


class TestPictureIdentity:
    @pytest.mark.parametrize(("first", "second", "same"), [
        ("https://a.example/up/photo-300x200.jpg", "https://a.example/up/photo.jpg", True),
        ("https://a.example/up/photo-300x200.JPG", "https://a.example/up/photo-1024x683.JPG",
         True),
        ("https://live.staticflickr.com/65535/1_ab12_m.jpg",
         "https://live.staticflickr.com/65535/1_ab12_b.jpg", True),
        ("https://64.media.tumblr.com/a/b/s640x960/c.jpg",
         "https://64.media.tumblr.com/a/b/s1280x1920/c.jpg", True),
        ("https://i.example/x.jpg?width=140&s=1", "https://i.example/x.jpg?width=460&s=2", True),
        ("https://c.example/v/1_n.jpg?stp=dst-jpg_s640x640&oh=00_a&oe=6",
         "https://c.example/v/1_n.jpg?stp=dst-jpg&oh=00_b&oe=6", True),
        ("https://a.example/img.php?id=1", "https://a.example/img.php?id=2", False),
        ("https://a.example/one.jpg", "https://a.example/two.jpg", False),
        ("https://example.org/1_ab12_m.jpg", "https://example.org/1_ab12_b.jpg", False),
    ])
    def test_renditions(self, first: str, second: str, same: bool) -> None:
        """Two renditions of one picture share an identity; two pictures do not."""
        assert (picture_identity(first) == picture_identity(second)) is same
