"""The review UI's HTML, rendered from the Jinja2 templates in `crawler/review/templates/`.

Autoescape is on and every value passes `storage.display.display_text` (bidi controls
made visible, length capped); fields from sources are clipped further in the templates
and URLs from sources are linked only through the `/leave` interstitial, and only when
they are public http(s) addresses. No inline script or style (the CSP forbids them):
behaviour is /static/review.js, looks are /static/review.css. Without JavaScript every
action still works as a plain form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from yarl import URL

from crawler.decide import Policy
from crawler.review.queries import Filters, Item, ItemDetail, is_confirmed
from crawler.display import linkable_url
from storage.display import make_environment

KEYS_HELP = (
    "j/k next/previous · u or space unblur · o open · r release · c confirm · "
    "t or 1–9 choose the tag · y/n label it · ? this help"  # a real en dash
)
NAV = (("quarantine", "Quarantine"), ("held", "Held"), ("library", "Library"))
_ENVIRONMENT = make_environment("crawler.review", linkable_url)


@dataclass(frozen=True)
class View:
    """A tab over one queue (to decide / confirmed): its label, path and count."""

    label: str
    path: str
    count: int
    current: bool


def label_tags(policy: Policy, items: Sequence[Item] = ()) -> list[str]:
    """The tags a reviewer can label: quarantine tags first, then every other known tag."""
    known = set(policy.thresholds) | {tag for item in items for tag in item.scores}
    known |= {tag for item in items for tag in item.labels}
    rest = sorted(known - set(policy.quarantine_tags))
    return list(policy.quarantine_tags) + rest


def _render(template: str, *, title: str, page_kind: str, counts: Mapping[str, int],
            tags: Sequence[str] = (), csrf: str = "", signed_in: bool = True,
            **values: Any) -> str:
    return _ENVIRONMENT.get_template(template).render(
        title=title, page_kind=page_kind, counts=counts, tags=list(tags), csrf=csrf,
        signed_in=signed_in, nav=NAV, keys_help=KEYS_HELP, **values) + "\n"


def list_page(title: str, path: str, items: Sequence[Item], *, total: int, filters: Filters,
              policy: Policy, csrf: str, next_url: str, sources: Sequence[str],
              counts: Mapping[str, int], page_size: int, filter_tags: Sequence[str],
              tag_counts: Mapping[str, int] | None = None,
              views: Sequence[View] = ()) -> str:
    """A queue (quarantine, held) or a library folder: filters, cards, pages.

    `tag_counts` (the library) lists the tags first; `views` are the queue's tabs.
    """
    tags = label_tags(policy, items)
    return _render(
        "list.html", title=title, page_kind="list", counts=counts, tags=tags, csrf=csrf,
        path=path, items=items, total=total, filters=filters, policy=policy,
        next_url=next_url, sources=sources, filter_tags=filter_tags, tag_counts=tag_counts,
        views=views, pages=max(1, -(-total // page_size)),
    )


def item_page(detail: ItemDetail, policy: Policy, csrf: str,
              counts: Mapping[str, int]) -> str:
    """One image: picture, scores against thresholds, labels with history, its sources."""
    item = detail.item
    back = f"/{item.placement}"
    if item.placement == "quarantine" and is_confirmed(item, policy.quarantine_tags):
        back = "/quarantine/confirmed"
    return _render(
        "item.html", title=f"Image {item.sha256[:12]}", page_kind="item", counts=counts,
        tags=label_tags(policy, [item]), csrf=csrf, detail=detail, policy=policy,
        here=f"/item/{item.sha256}", back=back,
    )


def leave_page(url: str, csrf: str, counts: Mapping[str, int]) -> str:
    """The interstitial before a site a feed named: its host, the URL, a new-tab link."""
    linkable = linkable_url(url)
    host = URL(url).host if linkable else None
    return _render("leave.html", title="Leaving megane review", page_kind="message",
                   counts=counts, csrf=csrf, url=url, linkable=linkable, host=host)


def message_page(title: str, text: str, counts: Mapping[str, int], csrf: str = "") -> str:
    return _render("message.html", title=title, page_kind="message", counts=counts,
                   csrf=csrf, text=text)


def login_page(message: str = "") -> str:
    """The sign-in form (for a token typed in, after the one-time link was used)."""
    return _render("login.html", title="Sign in", page_kind="message", counts={},
                   signed_in=False, message=message)
