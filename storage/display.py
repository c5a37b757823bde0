"""Showing text that came from sources: Jinja2 environments, bidi controls, length caps, links.

Every HTML page megane writes (the review UI, `quarantine/index.html`) is rendered from a
Jinja2 template through `make_environment`, which turns autoescape on and passes every
`{{ value }}` through `display_text`: bidi controls are shown as visible `[U+202E]` marks
(a right-to-left override in an author name could otherwise make `gpj.exe` read `exe.jpg`),
any value longer than `MAX_VALUE_CHARS` is cut, and credentials are removed
(`storage.redact.redact`, the last line of defence for URLs and reasons from sources).
Templates cap fields from sources further with the `clip` filter, and link to a URL only
where the `linkable` rule allows it.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

import jinja2
from markupsafe import Markup

from storage.redact import redact
from storage.untrusted import capped_text


BIDI_CONTROLS = frozenset(
    [chr(code) for code in range(0x202A, 0x202F)]     # LRE, RLE, PDF, LRO, RLO
    + [chr(code) for code in range(0x2066, 0x206A)]   # LRI, RLI, FSI, PDI
    + ["\u200e", "\u200f", "\u061c"]                   # LRM, RLM, ALM
)
_BIDI_MARKS = {ord(char): f"[U+{ord(char):04X}]" for char in BIDI_CONTROLS}

TEXT_CHARS = 200
"""Display cap of one short field from a source (author, title, a source name, a reason)."""
LIST_CHARS = 1000
"""Display cap of a joined list from a source (tags, flags)."""
URL_TEXT_CHARS = 300
"""Display cap of a URL shown as text."""
MAX_LINK_CHARS = 4096
"""Longer URLs are shown as (clipped) text, never linked."""
MAX_VALUE_CHARS = 4096
"""The backstop: no single rendered value is longer, whatever the template forgot to clip."""
ELLIPSIS = "…"


def neutralise_bidi(text: str) -> str:
    """`text` with every bidi control replaced by a visible `[U+XXXX]` mark."""
    return text.translate(_BIDI_MARKS)


def clip(text: object, limit: int = TEXT_CHARS) -> str:
    """`text` cut to `limit` characters, ending in `…` (and the count left out) when cut."""
    return capped_text("" if text is None else str(text), limit) or ""


def display_text(value: Any) -> Markup:
    """Jinja2's `finalize`: every rendered value, bidi controls neutralised, length capped.

    Markup (already safe HTML from the template itself) keeps its markup and loses only
    the bidi controls. Any other value is made text, capped and escaped here with
    `html.escape` (quotes included), the escaping the pages had before templates, so
    autoescape then has nothing left to do.
    """
    if value is None:
        return Markup("")
    if isinstance(value, Markup):
        return Markup(neutralise_bidi(str(value)))
    text = redact(clip(str(value), MAX_VALUE_CHARS))
    return Markup(html.escape(neutralise_bidi(text), quote=True))


def never_link(url: object) -> bool:
    """The default link rule of storage/: no URL from a source is rendered as a link.

    storage/ cannot judge addresses (that policy is `crawler.netguard`'s); callers in
    crawler/ pass `crawler.display.linkable_url` instead.
    """
    return False


def format_time(timestamp: float | None) -> str:
    """A local `YYYY-MM-DD HH:MM`, or "" for no time."""
    if not timestamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def make_environment(package: str,
                     linkable: Callable[[object], bool] = never_link) -> jinja2.Environment:
    """A Jinja2 environment over `package`'s `templates/` folder, autoescape on for all.

    `linkable` is the template test `is linkable`: whether a URL from a source may be a link.
    """
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=True,
        finalize=display_text,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["clip"] = clip
    environment.filters["bidi"] = neutralise_bidi
    environment.filters["when"] = format_time
    environment.tests["linkable"] = linkable
    return environment


__all__ = [
    "BIDI_CONTROLS",
    "clip",
    "display_text",
    "format_time",
    "make_environment",
    "neutralise_bidi",
    "never_link",
]
