"""Entity declarations are refused by where they sit, not by a byte scan; parsing is thread-safe."""

from __future__ import annotations

import threading
import warnings

import pytest

from crawler.errors import SourceError
from crawler.sources import rss
from crawler.sources.xmlsafe import declares_entities

BASE = "https://example.org/feed.xml"

QUOTED = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>t</title>
<item><title>How XML bombs work</title><link>https://example.org/a</link>
<description><![CDATA[<p>A bomb starts with <code>&lt;!ENTITY lol "lol"&gt;</code> or
<!ENTITY lol "lol"> written raw.</p><img src="https://example.org/a.jpg">]]></description>
</item>
<item><title>b</title><link>https://example.org/b</link>
<enclosure url="https://example.org/b.jpg" type="image/jpeg" title='&lt;!ENTITY x "y"&gt;'/>
</item></channel></rss>"""

RSS091 = b"""<?xml version="1.0"?>
<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"
 "http://my.netscape.com/publish/formats/rss-0.91.dtd">
<!-- a comment with <!ENTITY inside -->
<rss version="0.91"><channel><title>t</title><link>https://example.org/</link>
<item><title>a</title><link>https://example.org/a</link>
<description>&lt;img src="https://example.org/a.jpg"&gt;</description></item>
</channel></rss>"""


class TestDeclaresEntities:
    @pytest.mark.parametrize(("body", "expected"), [
        (b'<!DOCTYPE r [<!ENTITY a "b">]><r/>', True),
        (b'<?xml version="1.0"?>\n<!-- c -->\n<!DOCTYPE r [\n <!entity a "b">\n]><r>&a;</r>', True),
        ('<?xml version="1.0" encoding="utf-16"?><!DOCTYPE r [<!ENTITY a "b">]><r/>'
         .encode("utf-16"), True),
        (b'<!DOCTYPE r SYSTEM "http://example.org/r.dtd"><r/>', False),
        (b"<r><![CDATA[<!ENTITY a 'b'>]]></r>", False),
        (b"<r a='&lt;!ENTITY'/>", False),
        (b"<!-- <!DOCTYPE r [<!ENTITY a 'b'>]> --><r/>", False),
        (b"", False),
        (b"\xff\xfe\x00garbage", False),
    ])
    def test_only_a_doctype_internal_subset_declares(self, body: bytes, expected: bool) -> None:
        """Only an <!ENTITY in the DOCTYPE's internal subset, before the root, counts."""
        assert declares_entities(body) is expected


class TestFeedsWithEntityText:
    def test_quoted_entity_in_cdata_and_attribute_keeps_the_feed(self) -> None:
        """A quoted <!ENTITY inside CDATA or an attribute is text: both items' images are read."""
        refs = rss.parse_feed(QUOTED, source="feed", base_url=BASE)
        assert [ref.url for ref in refs] == ["https://example.org/a.jpg",
                                            "https://example.org/b.jpg"]

    def test_rss091_public_doctype_is_read(self) -> None:
        """RSS 0.91's public DOCTYPE declares no entities and the feed is read."""
        refs = rss.parse_feed(RSS091, source="feed", base_url=BASE)
        assert [ref.url for ref in refs] == ["https://example.org/a.jpg"]

    def test_internal_subset_entities_are_refused_naming_the_url(self) -> None:
        """A DOCTYPE declaring entities is refused with a SourceError naming the feed URL."""
        body = b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "b">]><rss version="2.0"/>'
        with pytest.raises(SourceError, match=r"example\.org/feed\.xml"):
            rss.parse_feed(body, source="feed", base_url=BASE)


class TestThreadSafety:
    def test_parallel_parses_leave_the_warning_filters_alone(self) -> None:
        """Parsing feeds in many threads at once never changes the process's warning filters."""
        before = list(warnings.filters)
        errors: list[BaseException] = []

        def parse_many() -> None:
            try:
                for _ in range(20):
                    rss.parse_feed(QUOTED, source="feed", base_url=BASE)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=parse_many) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert list(warnings.filters) == before
