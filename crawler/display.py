"""Which URLs from sources the HTML pages may render as links (the review UI, the contact sheet)."""

from __future__ import annotations

from crawler.errors import BlockedAddressError, PermanentFetchError
from crawler.netguard import check_url
from storage.display import BIDI_CONTROLS, MAX_LINK_CHARS


def linkable_url(url: object) -> bool:
    """Whether a URL from a source may be rendered as a link.

    Only http(s) URLs to public hosts: never another scheme (`javascript:`, `data:`,
    `file:`), never a loopback, private or link-local address in any spelling nor a name
    such as `localhost` (one owner for that policy: `crawler.netguard.check_url`), never a
    URL longer than `MAX_LINK_CHARS`.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_LINK_CHARS:
        return False
    if any(char in BIDI_CONTROLS or ord(char) < 32 for char in url):
        return False
    try:
        check_url(url)
    except (PermanentFetchError, BlockedAddressError):
        return False
    return True


__all__ = ["linkable_url"]
