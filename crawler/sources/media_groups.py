"""Media RSS groups: which `media:content` renditions a larger one in its group supersedes.

feedparser flattens `<media:group>`, losing which `media:content` elements are renditions
of one thing; `smaller_renditions` finds the groups in the raw bytes so that only the
largest rendition of each is kept. Every repetition is bounded so that hostile bytes cannot
make the scan quadratic.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

# feedparser flattens <media:group>, losing which media:content are renditions of one
# thing; these find the groups in the raw bytes so that only the largest rendition is kept.
# Every repetition is bounded so that hostile bytes cannot make the scan quadratic.
_GROUP_TAG = re.compile(rb"<(/?)[A-Za-z_][\w.-]{0,64}:group\b[^<>]{0,2000}>")
_CONTENT = re.compile(rb"<[A-Za-z_][\w.-]{0,64}:content\b([^<>]{0,4000})>")
_ATTRIBUTE = re.compile(rb"""([A-Za-z_][\w.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def smaller_renditions(body: bytes) -> set[str]:
    """URLs of media:content that a larger rendition in the same media:group supersedes."""
    losers: set[str] = set()
    for group in _groups(body):
        renditions = []
        for content in _CONTENT.finditer(group):
            attributes = {name.decode("ascii", "replace").lower():
                          html.unescape((double or single).decode("utf-8", "replace"))
                          for name, double, single in _ATTRIBUTE.findall(content.group(1))}
            if attributes.get("url"):
                renditions.append(attributes)
        if len(renditions) > 1:
            best = max(renditions, key=_rendition_size)
            losers.update(item["url"] for item in renditions if item is not best)
    return losers


def _groups(body: bytes) -> list[bytes]:
    """The inner bytes of each <x:group>...</x:group>, in one linear pass."""
    groups: list[bytes] = []
    opened: int | None = None
    for tag in _GROUP_TAG.finditer(body):
        if not tag.group(1):
            opened = tag.end()
        elif opened is not None:
            groups.append(body[opened:tag.start()])
            opened = None
    return groups


def _rendition_size(attributes: Mapping[str, str]) -> tuple[int, int, int]:
    def number(key: str) -> int:
        value = attributes.get(key, "").strip()
        return int(value) if value.isdigit() else 0
    return (number("width") * number("height"), number("filesize"),
            1 if attributes.get("isdefault", "").lower() == "true" else 0)
