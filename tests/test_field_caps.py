"""Text fields from sources are stored with length caps (issue 12: a 200,000-char post)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from storage.catalogue import Catalogue
from storage.records import MediaRef
from storage.untrusted import (
    MAX_AUTHOR_CHARS,
    MAX_ITEM_CHARS,
    MAX_LIST_ITEMS,
    MAX_POST_URL_CHARS,
    capped_text,
)


class TestCappedText:
    @pytest.mark.parametrize(("value", "limit", "expected"), [
        (None, 5, None),
        ("", 5, ""),
        ("abcde", 5, "abcde"),
        ("abcdef", 5, "abcde… (+1 chars)"),
        ("x" * 200_000, 3, "xxx… (+199997 chars)"),
    ])
    def test_cut_and_marked(self, value: str | None, limit: int, expected: str | None) -> None:
        """A value over the cap is cut and says how much was cut; others are unchanged."""
        assert capped_text(value, limit) == expected


class TestStoredCaps:
    async def test_huge_fields_are_capped_when_stored(self, catalogue: Catalogue) -> None:
        """A 200,000-char author, a huge post URL and 1,000 tags are stored within caps."""
        hostile = MediaRef(
            url="https://cdn.example.org/a.jpg", source="feed",
            author="A" * 200_000, post_url="https://example.org/p?" + "q" * 100_000,
            tags=tuple(f"tag{index}" + "t" * 200 for index in range(5000)),
            flags=(*(f"junk:{index}" for index in range(200)), "mastodon:sensitive"),
            extra=(("title", "T" * 50_000),),
        )
        [row] = await catalogue.add_media([hostile], now=1.0)
        stored = sqlite3.connect(catalogue.path).execute(
            "SELECT author, post_url, tags, flags, extra FROM media WHERE id = ?", (row.id,)
        ).fetchone()
        author, post_url, tags, flags, extra = stored
        assert author.startswith("A" * MAX_AUTHOR_CHARS) and len(author) < MAX_AUTHOR_CHARS + 32
        assert len(post_url) < MAX_POST_URL_CHARS + 32
        assert len(json.loads(tags)) == MAX_LIST_ITEMS
        assert all(len(tag) < MAX_ITEM_CHARS + 32 for tag in json.loads(tags))
        # No flag is ever dropped: one of them may be what quarantines the image.
        assert "mastodon:sensitive" in json.loads(flags) and len(json.loads(flags)) == 201
        assert len(json.loads(extra)["title"]) < 1100
        total = sum(len(str(value)) for value in stored)
        assert total < 150_000  # was over 1.5 MB as given

    async def test_a_booru_tag_list_is_kept_whole(self, catalogue: Catalogue) -> None:
        """Hundreds of tags (boorus send them alphabetically) are all kept: a late one may
        be aliased to a quarantine tag."""
        tags = (*(f"tag_{index:04d}" for index in range(600)), "zz_nude")
        ref = MediaRef(url="https://cdn.example.org/c.jpg", source="booru", tags=tags)
        [row] = await catalogue.add_media([ref], now=1.0)
        assert row.tags == tags

    async def test_ordinary_fields_are_unchanged(self, catalogue: Catalogue) -> None:
        """Fields within the caps are stored exactly as the source gave them."""
        ref = MediaRef(url="https://cdn.example.org/b.jpg", source="feed", author="Ann",
                       post_url="https://example.org/p/1", tags=("megane", "cat"),
                       flags=("booru:rating:e",), extra=(("title", "Hello"),))
        [row] = await catalogue.add_media([ref], now=1.0)
        assert (row.author, row.post_url, row.tags, row.flags) == (
            "Ann", "https://example.org/p/1", ("megane", "cat"), ("booru:rating:e",))
