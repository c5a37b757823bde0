"""Hypothesis properties of the rss parser: any input yields MediaRefs or a SourceError.

`parse_feed` is fed arbitrary bytes and XML-ish documents assembled from hostile parts
(control characters, out-of-range character references, odd hosts and schemes, xml:base
values, broken nesting); URL resolution is fed arbitrary bases and references.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crawler.errors import SourceError
from crawler.sources import rss
from crawler.sources.html_images import html_images, not_a_picture, picture_identity
from crawler.sources.item_pictures import resolve_url
from storage.records import MediaRef

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
BASE = "https://feeds.example.org/feed.xml"

SCHEMES = st.sampled_from(["http", "https", "ftp", "file", "data", "javascript", "mailto",
                           "HTTP", "h\u0338ttp", "", "1http", "a+b.c-d"])
HOSTS = st.one_of(
    st.sampled_from(["example.org", "img.example.jp\uff1a8080", "\u2105.example", "[::1",
                     "[::1]:80", "xn--nxasmq6b.example", "日本語.example", "a@b:c@d",
                     "exa mple.org", "example.org:99999", "", "%zz", "\u0000host"]),
    st.text(min_size=0, max_size=20),
)
TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)
CHAR_REFERENCES = st.sampled_from(["&#xFFFFFFFF;", "&#0;", "&#xD800;", "&#x1;", "&#65;",
                                   "&#99999999999;", "&amp;", "&bogus;", "&#x;", "&"])


@st.composite
def urls(draw: st.DrawFn) -> str:
    """A URL-ish string: a scheme, a host, a path, sometimes relative or broken."""
    shape = draw(st.integers(0, 4))
    path = draw(st.text(max_size=15))
    if shape == 0:
        return path
    if shape == 1:
        return f"//{draw(HOSTS)}/{path}"
    if shape == 2:
        return draw(TEXT)
    return f"{draw(SCHEMES)}://{draw(HOSTS)}/{path}.jpg"


def attribute(value: str) -> str:
    """`value` as a quoted XML attribute, with a hostile character reference sometimes."""
    return quoteattr(value)


@st.composite
def items(draw: st.DrawFn) -> str:
    """One RSS item or Atom-ish entry body built from hostile parts."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 8))
        url = draw(urls())
        if kind == 0:
            parts.append(f"<enclosure url={attribute(url)} type=\"image/jpeg\"/>")
        elif kind == 1:
            width, height = draw(st.text(max_size=6)), draw(st.text(max_size=6))
            parts.append(f"<media:content url={attribute(url)} medium=\"image\" "
                         f"width={attribute(width)} height={attribute(height)}/>")
        elif kind == 2:
            parts.append(f"<media:group><media:content url={attribute(url)} fileSize="
                         f"{attribute(draw(st.text(max_size=5)))}/></media:group>")
        elif kind == 3:
            parts.append(f"<media:thumbnail url={attribute(url)} width="
                         f"{attribute(draw(st.text(max_size=4)))}/>")
        elif kind == 4:
            html = (f"<img src={attribute(url)} srcset={attribute(draw(TEXT))} "
                    f"data-src={attribute(draw(urls()))} width={attribute(draw(TEXT))}>"
                    f"<a href={attribute(draw(urls()))}><img data-srcset="
                    f"{attribute(draw(TEXT))}></a>")
            parts.append(f"<description xml:base={attribute(draw(urls()))}><![CDATA[{html}]]>"
                         f"</description>")
        elif kind == 5:
            parts.append(f"<category>{draw(CHAR_REFERENCES)}{draw(TEXT)}</category>")
        elif kind == 6:
            parts.append(f"<link>{draw(urls())}{draw(CHAR_REFERENCES)}</link>")
        elif kind == 7:
            parts.append(f"<itunes:image href={attribute(url)}/>")
        else:
            parts.append(f"<media:keywords>{draw(TEXT)}</media:keywords>"
                         f"<media:rating>{draw(TEXT)}</media:rating>")
    return "".join(parts)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """An RSS or Atom document with hostile items, sometimes cut short or mis-encoded."""
    body = "".join(f"<item xml:base={attribute(draw(urls()))}>{draw(items())}</item>"
                   for _ in range(draw(st.integers(0, 3))))
    namespaces = ('xmlns:media="http://search.yahoo.com/mrss/" '
                  'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"')
    if draw(st.booleans()):
        text = (f'<?xml version="1.0"?><rss version="2.0" {namespaces}><channel>'
                f"<title>{draw(TEXT)}</title>{body}</channel></rss>")
    else:
        entries = body.replace("<item", "<entry").replace("</item>", "</entry>")
        text = (f'<feed xmlns="http://www.w3.org/2005/Atom" {namespaces} '
                f"xml:base={attribute(draw(urls()))}><title>t</title>{entries}</feed>")
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] if draw(st.booleans()) else raw


def parses_or_refuses(body: bytes) -> None:
    """The property: MediaRefs with storable text, or SourceError; nothing else."""
    try:
        refs = rss.parse_feed(body, source="feed", base_url=BASE)
    except SourceError:
        return
    for ref in refs:
        assert isinstance(ref, MediaRef) and ref.url
        for text in (ref.url, ref.post_url or "", ref.author or "", *ref.tags):
            text.encode("utf-8")


class TestParseFeedProperties:
    @PROPERTY
    @given(st.binary(max_size=2000))
    def test_arbitrary_bytes(self, body: bytes) -> None:
        """Arbitrary bytes yield MediaRefs or a SourceError, never another exception."""
        parses_or_refuses(body)

    @PROPERTY
    @given(documents())
    def test_hostile_documents(self, body: bytes) -> None:
        """Feeds built from hostile parts yield storable MediaRefs or a SourceError."""
        parses_or_refuses(body)

    @PROPERTY
    @given(st.lists(st.sampled_from([
        b"<rss>", b"<channel>", b"<item>", b"</item>", b"<media:group>", b"</media:group>",
        b"<media:content url='x.jpg'/>", b"<![CDATA[", b"]]>", b"&#xFFFFFFFF;", b"\x00",
        b"<description>&lt;img src=x&gt;</description>", b"<!DOCTYPE x>", b"\xff\xfe",
        b"<link>http://h\xef\xbc\x9a1/</link>", b"<entry xml:base='http://[::1'>",
    ]), max_size=40))
    def test_token_soup(self, tokens: list[bytes]) -> None:
        """Any sequence of feed-ish tokens yields MediaRefs or a SourceError."""
        parses_or_refuses(b"".join(tokens))


class TestUrlProperties:
    @PROPERTY
    @given(st.text(max_size=60), st.lists(st.one_of(st.none(), urls(), TEXT), max_size=3))
    @example(";", [";"])  # urljoin(";", ";") == "": found by Hypothesis in CI
    def test_resolve_never_raises(self, raw: str, bases: list[str | None]) -> None:
        """Resolving any reference against any bases returns a string, never raises; only a
        blank reference resolves to nothing."""
        resolved = resolve_url(raw, bases)
        assert isinstance(resolved, str)
        blank = all(character.isspace() or character <= " " for character in raw)
        assert (resolved == "") == blank

    @PROPERTY
    @given(urls(), urls())
    def test_resolve_odd_hosts_and_schemes(self, raw: str, base: str) -> None:
        """URLs with odd hosts and schemes resolve or come back as written."""
        resolved = resolve_url(raw, [base, BASE])
        assert isinstance(resolved, str)

    @PROPERTY
    @given(urls(), st.one_of(st.none(), st.integers(-5, 5000)), st.text(max_size=20),
           urls())
    def test_picture_rule_total(self, url: str, size: int | None, classes: str,
                                link: str) -> None:
        """The not-a-picture rule and the rendition identity accept any URL and attributes."""
        reason = not_a_picture(url, width=size, height=size, classes=classes, link=link,
                               containers=(classes,))
        assert reason is None or isinstance(reason, str)
        assert isinstance(picture_identity(url), str)

    @PROPERTY
    @given(st.text(max_size=300))
    def test_html_images_total(self, html: str) -> None:
        """Any text read as HTML gives a list of images, each with a non-empty URL."""
        assert all(image.url for image in html_images(html))
