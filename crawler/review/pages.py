"""Server-rendered HTML of the review UI. Every value goes through `html.escape`.

No inline script or style (the CSP forbids them): behaviour is /static/review.js, looks
are /static/review.css. Without JavaScript every action still works as a plain form.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from urllib.parse import urlencode

from crawler.decide import Policy
from crawler.review.queries import Filters, Item, ItemDetail
from storage.redact import redact

KEYS_HELP = (
    "j/k next/previous · u or space unblur · o open · r release · c confirm · "
    "t or 1–9 choose the tag · y/n label it · ? this help"
)


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def label_tags(policy: Policy, items: Sequence[Item] = ()) -> list[str]:
    """The tags a reviewer can label: quarantine tags first, then every other known tag."""
    known = set(policy.thresholds) | {tag for item in items for tag in item.scores}
    known |= {tag for item in items for tag in item.labels}
    rest = sorted(known - set(policy.quarantine_tags))
    return list(policy.quarantine_tags) + rest


def layout(title: str, content: str, *, counts: Mapping[str, int], tags: Sequence[str],
           page_kind: str) -> str:
    """The common frame: navigation with counts, the current tag, the keys help."""
    nav = " ".join(
        f'<a href="/{name}">{escape(label)} ({counts.get(name, 0)})</a>'
        for name, label in (("quarantine", "Quarantine"), ("held", "Held"),
                            ("library", "Library"))
    )
    current = (f'<span>tag for y/n: <b id="current-tag">{escape(tags[0])}</b></span>'
               if tags else "")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)} · megane review</title>"
        '<link rel="stylesheet" href="/static/review.css">'
        '<script src="/static/review.js" defer></script></head>'
        f'<body data-page="{_attr(page_kind)}" data-tags="{_attr(",".join(tags))}">'
        f"<header><nav>{nav}</nav>{current}</header>"
        f'<div id="help" hidden>{escape(KEYS_HELP)}</div>'
        f"<main><h1>{escape(title)}</h1>{content}</main></body></html>\n"
    )


def _hidden(csrf: str, next_url: str) -> str:
    return (f'<input type="hidden" name="csrf" value="{_attr(csrf)}">'
            f'<input type="hidden" name="next" value="{_attr(next_url)}">')


def _post(action: str, csrf: str, next_url: str, buttons: str, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return (f'<form method="post" action="{_attr(action)}"{klass}>'
            f"{_hidden(csrf, next_url)}{buttons}</form>")


def actions(item: Item, csrf: str, next_url: str, tags: Sequence[str]) -> str:
    """Release, confirm, one y/n pair per tag, delete: each a POST form."""
    base = f"/item/{item.sha256}"
    parts = []
    if item.placement != "library":
        parts.append(_post(f"{base}/release", csrf, next_url,
                           '<button class="release" data-key="r">release (r)</button>'))
    parts.append(_post(f"{base}/confirm", csrf, next_url,
                       '<button class="confirm" data-key="c">confirm NSFW (c)</button>'))
    pairs = "".join(
        f'<span class="tag">{escape(tag)} '
        f'<button name="label" value="{_attr(tag)}=yes" data-label="{_attr(tag)}=yes">y</button>'
        f'<button name="label" value="{_attr(tag)}=no" data-label="{_attr(tag)}=no">n</button>'
        "</span> "
        for tag in tags
    )
    parts.append(_post(f"{base}/label", csrf, next_url, pairs, "labels"))
    parts.append(_post(f"{base}/delete", csrf, next_url,
                       '<button class="delete">delete</button>', "delete"))
    return f'<div class="actions">{"".join(parts)}</div>'


def _scores(item: Item, policy: Policy) -> str:
    return ", ".join(
        f'<span class="{"over" if score >= policy.threshold(tag) else ""}">'
        f"{escape(tag)} {score:.2f}</span>"
        for tag, score in sorted(item.scores.items())
    ) or "not classified"


def _labels(labels: Mapping[str, bool]) -> str:
    return " ".join(
        f'<span class="{"yes" if value else "no"}">{escape(tag)}={"yes" if value else "no"}</span>'
        for tag, value in sorted(labels.items())
    )


def picture(item: Item, *, wide: bool = False) -> str:
    """Blurred thumbnail (unblurred on click) unless the image is in the library."""
    sha = _attr(item.sha256)
    lazy = "" if wide else ' loading="lazy"'
    if item.placement == "library":
        return (f'<a class="open" href="/item/{sha}"><img src="/image/{sha}" '
                f'alt="image {sha[:12]}"{lazy}></a>')
    return (f'<a class="blurred" href="/image/{sha}"><img src="/thumb/{sha}" '
            f'alt="blurred image {sha[:12]}; click to unblur"{lazy}></a>')


def card(item: Item, policy: Policy, csrf: str, next_url: str, tags: Sequence[str]) -> str:
    sha = _attr(item.sha256)
    size = f"{item.format or '?'} {item.width or '?'}×{item.height or '?'}"
    filed = f" · in {', '.join(item.tags)}" if item.tags else ""
    return (
        f'<article class="card" id="card-{sha}" data-sha="{sha}">{picture(item)}'
        f'<div class="meta"><a class="open" href="/item/{sha}"><code>{sha[:12]}</code></a> '
        f"{escape(size)}{escape(filed)}<br>{escape(redact(item.reason or ''))}<br>"
        f"{_scores(item, policy)}<br>{escape(', '.join(item.sources))}"
        f'<br><span class="labels">{_labels(item.labels)}</span></div>'
        f"{actions(item, csrf, next_url, tags)}</article>"
    )


def filter_form(action: str, filters: Filters, sources: Sequence[str],
                tags: Sequence[str]) -> str:
    def options(values: Sequence[str], chosen: str | None, empty: str) -> str:
        rows = [f'<option value="">{escape(empty)}</option>']
        rows += [f'<option value="{_attr(value)}"{" selected" if value == chosen else ""}>'
                 f"{escape(value)}</option>" for value in values]
        return "".join(rows)

    def number(name: str, value: float | None) -> str:
        shown = "" if value is None else f"{value:g}"
        return (f'<input type="number" name="{name}" min="0" max="1" step="0.01" '
                f'value="{_attr(shown)}" placeholder="{name}">')

    return (
        f'<form method="get" action="{_attr(action)}" class="filters">'
        f'<label>tag <select name="tag">{options(tags, filters.tag, "any")}</select></label>'
        f'<label>score {number("min", filters.min_score)}–{number("max", filters.max_score)}'
        "</label>"
        f'<label>source <select name="source">{options(sources, filters.source, "any")}'
        "</select></label><button>filter</button></form>"
        "<p class=\"meta\">The score range applies to the chosen tag "
        "(default: the first quarantine tag).</p>"
    )


def pager(path: str, filters: Filters, total: int, page_size: int) -> str:
    pages = max(1, -(-total // page_size))
    if pages == 1:
        return ""
    links = " ".join(
        f"<b>{number}</b>" if number == filters.page else
        f'<a href="{_attr(path + "?" + urlencode(filters.as_query(page=number)))}">{number}</a>'
        for number in range(1, pages + 1)
    )
    return f'<p class="pages">{links}</p>'


def list_page(title: str, path: str, items: Sequence[Item], *, total: int, filters: Filters,
              policy: Policy, csrf: str, next_url: str, sources: Sequence[str],
              counts: Mapping[str, int], page_size: int, filter_tags: Sequence[str],
              intro: str = "") -> str:
    """A queue (quarantine, held) or a library folder: filters, cards, pages."""
    tags = label_tags(policy, items)
    cards = "".join(card(item, policy, csrf, next_url, tags) for item in items)
    empty = "" if items else "<p>Nothing here.</p>"
    content = (intro + filter_form(path, filters, sources, filter_tags)
               + f"<p>{total} image(s). Press ? for keys.</p>{empty}"
               + f'<div class="grid">{cards}</div>'
               + pager(path, filters, total, page_size))
    return layout(title, content, counts=counts, tags=tags, page_kind="list")


def library_index(tag_counts: Mapping[str, int]) -> str:
    rows = "".join(
        f'<li><a href="/library?{_attr(urlencode({"tag": tag}))}">{escape(tag)}</a> ({count})</li>'
        for tag, count in sorted(tag_counts.items())
    )
    return f"<ul>{rows}</ul>" if rows else "<p>The library is empty.</p>"


def item_page(detail: ItemDetail, policy: Policy, csrf: str,
              counts: Mapping[str, int]) -> str:
    """One image: picture, scores against thresholds, labels with history, its sources."""
    item = detail.item
    tags = label_tags(policy, [item])
    here = f"/item/{item.sha256}"
    score_rows = "".join(
        f'<tr><td>{escape(tag)}</td><td class="{"over" if score >= policy.threshold(tag) else ""}">'
        f"{score:.4f}</td><td>{policy.threshold(tag):.2f}</td></tr>"
        for tag, score in sorted(item.scores.items())
    ) or '<tr><td colspan="3">not classified</td></tr>'
    label_rows = "".join(
        f"<tr><td>{escape(record.tag)}</td><td>{'yes' if record.value else 'no'}</td>"
        f"<td>{escape(record.origin)}</td><td>{escape(record.who or '')}</td>"
        f"<td>{escape(_when(record.created_at))}</td></tr>"
        for record in detail.history
    ) or '<tr><td colspan="5">no labels yet</td></tr>'
    media_rows = "".join(
        f"<tr><td>{escape(row.source)}</td><td>{_link(row.url)}</td>"
        f"<td>{_link(row.post_url) if row.post_url else ''}</td>"
        f"<td>{escape(row.author or '')}</td><td>{escape(', '.join(row.flags))}</td>"
        f"<td>{escape(', '.join(row.tags))}</td><td>{escape(row.state.value)}</td>"
        f"<td>{escape(_when(row.created_at))}</td></tr>"
        for row in detail.media
    )
    steps = "".join(
        f'<a href="/item/{_attr(sha)}" data-key="{key}">{label} ({key})</a> '
        for sha, key, label in ((detail.previous, "k", "previous"), (detail.next, "j", "next"))
        if sha is not None
    )
    content = (
        f"<p>{steps}<a href=\"/{_attr(item.placement)}\">back to {escape(item.placement)}</a></p>"
        f'<article class="card wide" data-sha="{_attr(item.sha256)}">{picture(item, wide=True)}'
        f'<div class="meta">{escape(item.placement)}: {escape(redact(item.reason or ""))}'
        f"{escape(' · in ' + ', '.join(item.tags)) if item.tags else ''}<br>"
        f"{escape(item.format or '?')} {item.width or '?'}×{item.height or '?'} · model "
        f"{escape(item.model_version or 'none')} · <code>{escape(item.sha256)}</code></div>"
        f"{actions(item, csrf, here, tags)}</article>"
        f"<h2>Scores</h2><table><tr><th>tag</th><th>score</th><th>threshold</th></tr>"
        f"{score_rows}</table>"
        f"<h2>Labels</h2><p class=\"labels\">{_labels(item.labels)}</p><table><tr><th>tag</th>"
        f"<th>value</th><th>origin</th><th>who</th><th>when</th></tr>{label_rows}</table>"
        f"<h2>Sources</h2><table><tr><th>source</th><th>media</th><th>post</th><th>author</th>"
        f"<th>flags</th><th>tags</th><th>state</th><th>seen</th></tr>{media_rows}</table>"
    )
    return layout(f"Image {item.sha256[:12]}", content, counts=counts, tags=tags,
                  page_kind="item")


def _link(url: str) -> str:
    """A link for http(s) URLs only (no javascript: or data: from a hostile feed).

    Shown and linked without credentials (`storage.redact`): a signed media URL is no
    business of the page.
    """
    url = redact(url)
    if url.startswith(("https://", "http://")):
        return f'<a href="{_attr(url)}" rel="noreferrer noopener" target="_blank">{escape(url)}</a>'
    return escape(url)


def message_page(title: str, text: str, counts: Mapping[str, int]) -> str:
    return layout(title, f'<p class="error">{escape(text)}</p>', counts=counts, tags=(),
                  page_kind="message")
